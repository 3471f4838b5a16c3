// DAPO dynamic sampling and overlong shaping.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  DynamicSamplingBatch,
  DynamicSamplingError,
  filterGroupsBySpread,
  overlongPenalty,
  shapeOverlongScores,
} from "../../src/rl/index.js";

test("groups with zero spread are dropped; singletons are kept as in verl", () => {
  const metric = new Float64Array([1, 1, 0, 1, 0, 0, 1]);
  const result = filterGroupsBySpread(metric, ["a", "a", "b", "b", "c", "c", "d"]);
  assert.deepEqual(result.keptGroupIds, ["b", "d"]);
  assert.deepEqual(result.keptResponses, [[2, 3], [6]]);
  assert.equal(result.keptGroupCount, 2);
  assert.equal(result.droppedGroupCount, 2);
});

test("the accumulator asks for rounds until promptsPerStep groups, then truncates", () => {
  const batch = new DynamicSamplingBatch({ promptsPerStep: 3, maxGenerationRounds: 3 });
  // round 0: prompt 0 mixed, prompt 1 all right, prompt 2 mixed
  batch.addRound(new Float64Array([1, 0, 1, 1, 0, 1]), new Int32Array([0, 0, 1, 1, 2, 2]));
  assert.equal(batch.isComplete, false);
  assert.equal(batch.groupsCollected, 2);
  // round 1: both mixed; only the first is needed
  batch.addRound(new Float64Array([0, 1, 1, 0]), new Int32Array([7, 7, 8, 8]));
  assert.equal(batch.isComplete, true);
  assert.equal(batch.rounds, 2);
  assert.equal(batch.droppedGroupCount, 1);
  assert.deepEqual(batch.groups(), [
    { round: 0, groupId: 0, responseIndices: [0, 1] },
    { round: 0, groupId: 2, responseIndices: [4, 5] },
    { round: 1, groupId: 7, responseIndices: [0, 1] },
  ]);
  assert.throws(() => batch.addRound(new Float64Array([0, 1]), new Int32Array([0, 0])), /already complete/);
});

test("running out of rounds names the setting and what was collected", () => {
  const batch = new DynamicSamplingBatch({ promptsPerStep: 3, maxGenerationRounds: 2 });
  const allSame = new Float64Array([1, 1, 0, 1]);
  batch.addRound(allSame, new Int32Array([0, 0, 1, 1]));
  assert.throws(() => batch.groups(), /only 1 of 3 groups collected/);
  assert.throws(
    () => batch.addRound(allSame, new Int32Array([0, 0, 1, 1])),
    (e: DynamicSamplingError) =>
      e instanceof DynamicSamplingError &&
      e.groupsCollected === 2 &&
      /2 of 3 groups/.test(e.message) &&
      /maxGenerationRounds = 2/.test(e.message),
  );
});

test("bad options are rejected by name", () => {
  assert.throws(
    () => new DynamicSamplingBatch({ promptsPerStep: 0, maxGenerationRounds: 1 }),
    /promptsPerStep/,
  );
  assert.throws(
    () => new DynamicSamplingBatch({ promptsPerStep: 1, maxGenerationRounds: 0 }),
    /maxGenerationRounds/,
  );
  new DynamicSamplingBatch({ promptsPerStep: 1, maxGenerationRounds: Infinity });
});

test("overlong penalty ramps linearly over the last bufferTokens to −penaltyFactor", () => {
  const options = { maxResponseTokens: 20, bufferTokens: 4, penaltyFactor: 1 };
  assert.equal(overlongPenalty(10, options), 0);
  assert.equal(overlongPenalty(16, options), 0);
  assert.equal(overlongPenalty(17, options), -0.25);
  assert.equal(overlongPenalty(19, options), -0.75);
  assert.equal(overlongPenalty(20, options), -1);
  assert.deepEqual(
    [
      ...shapeOverlongScores(new Float64Array([1, 1]), new Int32Array([5, 18]), {
        ...options,
        penaltyFactor: 2,
      }),
    ],
    [1, 0],
  );
  assert.throws(() => overlongPenalty(1, { ...options, bufferTokens: 0 }), /bufferTokens/);
});
