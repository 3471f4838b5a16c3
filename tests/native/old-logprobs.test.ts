// Old logprobs on-policy (one epoch over one mini-batch, recomputeOldLogprobs "auto"): they come
// from the update's own forward instead of a pass of their own, and the run is the same as one
// that recomputes them: the same metrics rows, the same old logprobs and entropy per token.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ExperimentRun, type RankCall } from "../../src/controller/experiment.js";
import { type ExperimentConfig, resolveConfig } from "../../src/rl/config.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { localRank } from "../../src/worker/local.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("old-logprobs");
let modelPath = "";
let dataFile = "";
before(async () => {
  modelPath = join(dir.path, "model");
  await writeTinyModel(modelPath, { seed: 5 });
  dataFile = writeNextDigitData(join(dir.path, "data"));
});
after(() => dir.cleanup());

function config(name: string, overrides: Partial<ExperimentConfig> = {}): ExperimentConfig {
  return {
    name,
    runDir: join(dir.path, "runs", name),
    seed: 11,
    model: { path: modelPath, dtype: "float32" },
    data: { train: dataFile, maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 3 },
    // Several micro-batches, so the update's forward comes back in pieces to put together.
    tokensPerMicroBatch: 48,
    optimizer: { lr: 3e-3, weightDecay: 0 },
    totalSteps: 3,
    ...overrides,
  };
}

/** Runs `fn` on a fresh run whose worker calls are counted by command. */
async function counted<T>(
  c: ExperimentConfig,
  fn: (run: ExperimentRun, calls: Map<string, number>) => Promise<T>,
): Promise<T> {
  const local = localRank();
  const calls = new Map<string, number>();
  const call: RankCall = (rank, command, args) => {
    calls.set(command, (calls.get(command) ?? 0) + 1);
    return local.call(rank, command, args);
  };
  const run = await ExperimentRun.create(resolveConfig(c), call);
  try {
    return await fn(run, calls);
  } finally {
    await run.close();
    local.dispose();
  }
}

const untimed = (row: Record<string, number>) =>
  Object.fromEntries(Object.entries(row).filter(([k]) => !k.startsWith("timing") && !k.startsWith("perf/")));

/** Per step: the rows without timings, and each response's old logprobs and entropy from the rollouts table. */
async function steps(run: ExperimentRun, n: number) {
  const out: { row: Record<string, number>; old: number[][]; entropy: number[][] }[] = [];
  for (let i = 0; i < n; i++) {
    const row = untimed(await run.runStep());
    const table = run.rollouts();
    const column = (name: string) =>
      ((table.getChild(name)?.toArray() ?? []) as { toArray(): Float32Array }[]).map((v) =>
        Array.from(v.toArray()),
      );
    out.push({ row, old: column("old_logprobs"), entropy: column("entropy") });
  }
  return out;
}

test("on-policy, the update's forward gives the old logprobs: no pass of their own, the same run as recomputing them", async () => {
  const recomputed = await counted(
    config("recompute", { algorithm: { recomputeOldLogprobs: true } }),
    (run, calls) => steps(run, 3).then((s) => ({ s, logprobCalls: calls.get("model.logprobs") ?? 0 })),
  );
  const fromUpdate = await counted(config("auto"), (run, calls) =>
    steps(run, 3).then((s) => ({ s, logprobCalls: calls.get("model.logprobs") ?? 0 })),
  );
  assert.ok(recomputed.logprobCalls >= 3, `${recomputed.logprobCalls} logprob calls`);
  assert.equal(fromUpdate.logprobCalls, 0);
  for (let i = 0; i < 3; i++) {
    const a = recomputed.s[i];
    const b = fromUpdate.s[i];
    assert.ok(a && b);
    assert.deepEqual(b.row, a.row, `step ${i + 1}`);
    assert.deepEqual(b.old, a.old, `step ${i + 1}: old logprobs`);
    assert.deepEqual(b.entropy, a.entropy, `step ${i + 1}: entropy`);
    assert.equal(a.row["actor/ppo_kl"], 0);
    assert.equal(b.row["training/rollout_probs_diff_sequences"], 32);
  }
});

test("off-policy updates keep the pass; a switch to two epochs after the stage measures them before the update", async () => {
  await counted(config("two-mini-batches", { miniBatchesPerStep: 2 }), async (run, calls) => {
    await run.runStep();
    assert.equal(run.batch?.oldLogprobsFromUpdate, undefined);
    assert.ok((calls.get("model.logprobs") ?? 0) >= 1);
  });
  await counted(config("switch"), async (run, calls) => {
    const b = await run.rollout();
    await run.score();
    await run.filter();
    await run.oldLogprobs();
    // Left to the update: nothing measured yet.
    assert.equal(b.oldLogprobsFromUpdate, true);
    assert.ok(b.samples.every((s) => s.oldLogprobs === undefined));
    assert.equal(b.metrics["training/rollout_probs_diff_max"], undefined);
    await run.set({ epochsPerStep: 2 });
    await run.ref();
    await run.advantages();
    await run.update();
    assert.ok((calls.get("model.logprobs") ?? 0) >= 1, "measured before the two epochs");
    assert.ok(b.samples.every((s) => s.oldLogprobs?.length === s.response.length));
    assert.equal(b.metrics["actor/updates"], 2);
    assert.ok((b.metrics["training/rollout_probs_diff_max"] as number) < 1e-5);
  });
});
