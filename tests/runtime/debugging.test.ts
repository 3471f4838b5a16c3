// Stepwise debugging from a client, against a real controller and CPU worker: hooks that look at
// and change the batch, a hook that throws (the step stops, nothing is lost), pause points,
// settings changed between steps, snapshot/restore, and replay of a step with the same seeds.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { type Experiment, type HookError, isPaused, type MetricsRow } from "../../src/client/experiment.js";
import { type Cluster, connect } from "../../src/index.js";
import type { ExperimentConfig } from "../../src/rl/config.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";
import { killAll, tiller } from "../helpers/runtime.js";

const dir = tempDir("debugging");
let cluster: Cluster;
let config: ExperimentConfig;
before(async () => {
  const model = join(dir.path, "model");
  await writeTinyModel(model, { seed: 9 });
  config = {
    name: "debug",
    runDir: join(dir.path, "run"),
    seed: 11,
    model: { path: model },
    data: { train: writeNextDigitData(join(dir.path, "data")), maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 2 },
    tokensPerMicroBatch: 1024,
    optimizer: { lr: 3e-3 },
    totalSteps: 10,
  };
  const address = `ipc://${dir.path}/c.sock`;
  tiller(["controller", "--bind", address, "--cpu", "1"]);
  cluster = await connect(address, { timeoutMs: 20_000 });
  await cluster.waitForWorkers(1, 30_000);
});
after(async () => {
  await cluster?.shutdown().catch(() => undefined);
  cluster?.close();
  killAll();
  dir.cleanup();
});

const same = (a: MetricsRow, b: MetricsRow, keys: string[]) => {
  for (const k of keys) assert.equal(b[k], a[k], k);
};
const learning = [
  "critic/score/mean",
  "actor/pg_loss",
  "actor/grad_norm",
  "actor/entropy",
  "response_length/mean",
];

test("hooks see the batch and may change it; a throwing hook stops the step and loses nothing", {
  timeout: 60_000,
}, async () => {
  const exp: Experiment = await cluster.experiment({
    ...config,
    name: "hooks",
    runDir: join(dir.path, "hooks"),
  });
  const seen: string[] = [];
  const offSeen = exp.on("after:rollout", async (ctx) => {
    const table = await ctx.rollouts();
    seen.push(`${ctx.point} ${ctx.step} ${table.numRows}`);
  });
  // Every response scores 1 except the first of each group: the advantages follow the new scores.
  const offScores = exp.on("after:score", async (ctx) => {
    const table = await ctx.rollouts();
    const uids = table.getChild("uid")?.toArray() as string[];
    await ctx.setScores(uids.map((u, i) => (i > 0 && uids[i - 1] === u ? 1 : 0)));
  });
  const row = await exp.step();
  assert.ok(!isPaused(row), "no pause point is set");
  assert.deepEqual(seen, ["after:rollout 1 32"]);
  assert.equal(row["critic/score/mean"], 0.75);
  const table = await exp.rollouts();
  const adv = table.getChild("advantage")?.toArray() as Float64Array;
  assert.ok(adv[0] < 0 && adv[1] > 0, `advantages ${adv[0]}, ${adv[1]}`);
  offSeen();
  offScores();

  const off = exp.on("before:update", () => {
    throw new Error("looked wrong");
  });
  await assert.rejects(exp.step(), (e: HookError) => {
    assert.equal(e.point, "before:update");
    assert.match(e.message, /hook before:update failed: looked wrong/);
    return true;
  });
  // Nothing lost: the step is still in progress with its stages done; the weights did not move.
  assert.deepEqual(exp.status.inProgress?.stagesDone, [
    "rollout",
    "score",
    "filter",
    "old_logprobs",
    "ref",
    "advantages",
  ]);
  assert.equal(exp.stepsDone, 1);
  off();
  const finished = await exp.continueStep();
  assert.equal(finished.step, 2);
  await exp.close();
});

test("pauseAt stops before a stage; continueStep finishes the step as if uninterrupted", {
  timeout: 60_000,
}, async () => {
  const a = await cluster.experiment({ ...config, name: "straight", runDir: join(dir.path, "straight") });
  const straight = await a.step();
  assert.ok(!isPaused(straight));
  await a.close();
  const b = await cluster.experiment({ ...config, name: "paused", runDir: join(dir.path, "paused") });
  b.pauseAt("before:update");
  const paused = await b.step();
  // A pause is its own kind of answer, never a metrics row with a fake column.
  assert.deepEqual(paused, { step: 1, pausedAt: "before:update" });
  assert.equal(isPaused(paused), true);
  assert.equal(b.pausedAt, "before:update");
  // The step in progress can be looked at while paused: advantages are there, nothing trained yet.
  const table = await b.rollouts(1);
  assert.equal(table.numRows, 32);
  assert.ok(table.getChild("advantages")?.get(0));
  assert.equal(b.stepsDone, 0);
  const row = await b.continueStep();
  assert.ok(!isPaused(row));
  same(straight, row, learning);
  b.clearPauses();
  await b.close();
});

test("set() changes settings between steps, validated; snapshot/restore rewinds exactly", {
  timeout: 60_000,
}, async () => {
  const exp = await cluster.experiment({ ...config, name: "rewind", runDir: join(dir.path, "rewind") });
  await assert.rejects(exp.set({ lr: -1 }), /optimizer\.lr: -1 must be > 0/);
  await assert.rejects(
    exp.set({ model: { path: "/elsewhere" } }),
    /model: cannot change in a running experiment/,
  );
  await assert.rejects(exp.set({ rollout: { temprature: 2 } }), /rollout\.temprature: unknown setting/);
  const settings = (await exp.set({ lr: 1e-3, rollout: { temperature: 0.9 } })) as {
    optimizer: { lr: number };
    rollout: { temperature: number };
  };
  assert.equal(settings.optimizer.lr, 1e-3);
  assert.equal(settings.rollout.temperature, 0.9);
  await exp.step();
  const snap = await exp.snapshot();
  assert.equal(snap.step, 1);
  const first = await exp.step();
  assert.ok(!isPaused(first));
  assert.equal(first["actor/lr"], 1e-3);
  await exp.step();
  await exp.restore(snap);
  assert.equal(exp.stepsDone, 1);
  const metrics = await exp.metrics();
  assert.equal(metrics.numRows, 1);
  const again = await exp.step();
  assert.ok(!isPaused(again));
  same(first, again, learning);
  // replay(2) runs step 2 again from the snapshot of step 1 and comes back to step 2.
  const replay = await exp.replay(2);
  assert.equal(exp.stepsDone, 2);
  assert.equal(replay.identicalResponses, replay.responses);
  same(replay.original as MetricsRow, replay.replayed as MetricsRow, learning);
  await assert.rejects(exp.replay(1), /replay: step 1 needs a snapshot or checkpoint of step 0/);
  await exp.close();
});
