// What a notebook does with an experiment, against a real controller and CPU worker: stop() and
// the progress counts after a hook came and went, an Interrupt (SIGINT) stopping a run, replay of
// a step whose hook changed the scores, the change log of set(), branches kept by restore(), and
// the per-step distributions a run keeps.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  type Experiment,
  isPaused,
  type MetricsRow,
  type Paused,
  prepareConfig,
} from "../../src/client/experiment.js";
import { type Cluster, connect, notebook } from "../../src/index.js";
import type { ExperimentConfig } from "../../src/rl/config.js";
import { writeNextDigitData, writeNextDigitHeldOut, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";
import { killAll, tiller } from "../helpers/runtime.js";

const slowReward = fileURLToPath(new URL("../helpers/reward-fns.js", import.meta.url));

/** A finished step's row (a paused step fails the test). */
function finishedRow(r: MetricsRow | Paused): MetricsRow {
  assert.ok(!isPaused(r), "the step paused");
  return r;
}

const dir = tempDir("notebook-client");
let cluster: Cluster;
let config: ExperimentConfig;
before(async () => {
  const model = join(dir.path, "model");
  await writeTinyModel(model, { seed: 9 });
  config = {
    name: "client",
    runDir: join(dir.path, "run"),
    seed: 11,
    model: { path: model },
    data: { train: writeNextDigitData(join(dir.path, "data")), maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 2 },
    tokensPerMicroBatch: 1024,
    optimizer: { lr: 3e-3 },
    totalSteps: 100,
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

async function experiment(name: string): Promise<Experiment> {
  return cluster.experiment({ ...config, name, runDir: join(dir.path, name) });
}

test("stop() ends a run after a hook was added and removed, and the progress counts tokens", {
  timeout: 120_000,
}, async () => {
  const exp = await experiment("stop-after-hook");
  const off = exp.on("after:score", () => undefined);
  off();
  const tokens: number[] = [];
  const rows = await exp.run(60, {
    onMetrics: (row) => {
      if (row.step === 2) void exp.stop();
    },
    onProgress: (e) => {
      if (e.stage === "done") tokens.push(e.tokens ?? 0);
    },
  });
  assert.ok(
    rows.length >= 2 && rows.length <= 4,
    `stop() at step 2 ended the run after ${rows.length} steps`,
  );
  assert.ok(tokens.length >= 2 && tokens.every((t) => t > 0), `tokens per step: ${tokens.join(", ")}`);

  // Driven from here (a hook is set): stop() ends it too, and the progress still counts tokens.
  const offAgain = exp.on("after:rollout", () => undefined);
  const driven: number[] = [];
  const start = exp.stepsDone;
  const more = await exp.run(60, {
    onMetrics: (row) => {
      if (row.step === start + 1) void exp.stop();
    },
    onProgress: (e) => {
      if (e.stage === "done") driven.push(e.tokens ?? 0);
    },
  });
  offAgain();
  assert.ok(more.length <= 2, `a driven run went on for ${more.length} steps after stop()`);
  assert.ok(
    driven.every((t) => t > 0),
    `driven tokens: ${driven.join(", ")}`,
  );
  await exp.close();
});

test("an Interrupt (SIGINT to the kernel) stops a run at the next stage boundary, run by the controller or driven from here", {
  timeout: 120_000,
}, async () => {
  // The score stage takes 1.6 s (a slow verifier), so an Interrupt sent as it starts lands inside it.
  const exp = await cluster.experiment({
    ...config,
    name: "interrupt",
    runDir: join(dir.path, "interrupt"),
    reward: { fn: { module: slowReward, exportName: "slowNextDigit" } },
  });
  // tslab listens for SIGINT (to abandon the cell); a listener here stands for it, so that the
  // signal does not end this process.
  const kernelListener = () => undefined;
  process.on("SIGINT", kernelListener);
  try {
    // Run by the controller (no hooks): the step in progress stops before its next stage.
    const rows = await exp.run(60, {
      onProgress: (e) => {
        if (e.stage === "score" && e.step === 2) process.emit("SIGINT");
      },
    });
    assert.deepEqual(
      rows.map((r) => r.step),
      [1, 2],
      "two whole steps, the third interrupted",
    );
    assert.equal(exp.pausedAt, "before:filter");
    assert.deepEqual(exp.status.inProgress?.stagesDone, ["rollout", "score"]);
    assert.equal(exp.status.busy, null, "the controller is free again");
    const third = finishedRow(await exp.continueStep());
    assert.equal(third.step, 3);
    assert.ok(third["critic/score/mean"] !== undefined);

    // One controller-run step() stops the same way and says where.
    const interrupted = exp.step({
      onProgress: (e) => {
        if (e.stage === "score") process.emit("SIGINT");
      },
    });
    assert.deepEqual(await interrupted, { step: 4, pausedAt: "before:filter" });
    await exp.discard();

    // Driven from here (a hook is set): it stops at the next stage boundary too.
    const off = exp.on("after:rollout", () => {
      process.emit("SIGINT");
    });
    const driven = await exp.run(10);
    off();
    assert.deepEqual(driven, [], "the driven step stopped at a stage boundary, unfinished");
    assert.equal(exp.pausedAt, "before:score");
    const finished = finishedRow(await exp.continueStep());
    assert.equal(finished.step, exp.stepsDone);
    assert.ok(finished["critic/score/mean"] !== undefined);
    // An Interrupt is for the run in progress: the next run goes on (two steps, no stop left over).
    assert.equal((await exp.run(2)).length, 2);
  } finally {
    process.off("SIGINT", kernelListener);
    await exp.close();
  }
});

test("a sampled <pad> ends the response, as an eos does: none inside a response", {
  timeout: 120_000,
}, async () => {
  // Random weights over a 16-token vocabulary sample <pad> (id 0) often; hot sampling, 4 tokens.
  const exp = await cluster.experiment({
    ...config,
    name: "pad",
    runDir: join(dir.path, "pad"),
    promptsPerStep: 16,
    rollout: { samplesPerPrompt: 8, maxResponseTokens: 4, temperature: 1.5 },
  });
  try {
    await exp.step();
    const rollouts = await exp.rollouts();
    const responses = rollouts.getChild("response_tokens");
    const finish = rollouts.getChild("finish_reason");
    assert.ok(responses && finish, rollouts.schema.names.join(", "));
    let endedByPad = 0;
    for (let i = 0; i < rollouts.numRows; i++) {
      const ids = Array.from(responses.get(i) as ArrayLike<number>);
      const at = ids.indexOf(0);
      assert.ok(at === -1 || at === ids.length - 1, `row ${i}: <pad> inside the response ${ids.join(" ")}`);
      if (at === ids.length - 1) {
        endedByPad++;
        assert.equal(finish.get(i), "stop", `row ${i}: a response ended by <pad> stopped`);
      }
    }
    assert.ok(endedByPad > 0, "some response sampled <pad> (the case this test is about)");
  } finally {
    await exp.close();
  }
});

test("replay of a step whose hook changed the scores applies the change again: the same responses and metrics", {
  timeout: 180_000,
}, async () => {
  const exp = await experiment("replay-hooked");
  const snap = await exp.snapshot();
  await exp.step();
  const off = exp.on("after:score", async (ctx) => {
    const table = await ctx.rollouts();
    const responses = table.getChild("response")?.toArray() as string[];
    await ctx.setScores(responses.map((r) => (r.startsWith("7") ? 1 : 0.25)));
  });
  const hooked = finishedRow(await exp.step());
  off();
  // The step after the hooked one: its replay runs the hooked step again first (from the snapshot).
  const after = finishedRow(await exp.step());
  const replay = await exp.replay(hooked.step);
  assert.equal(replay.fromStep, snap.step, "two steps after the snapshot: the step between is run again");
  assert.equal(replay.patchesApplied, 1);
  assert.equal(replay.identicalResponses, replay.responses);
  assert.equal(replay.responses, replay.originalResponses);
  for (const key of ["critic/score/mean", "actor/pg_loss", "actor/grad_norm"]) {
    assert.equal(replay.replayed[key], hooked[key], key);
  }
  const again = await exp.replay(after.step);
  assert.equal(again.identicalResponses, again.responses);
  assert.equal(again.replayed["actor/pg_loss"], after["actor/pg_loss"]);
  // The run is where it was.
  assert.equal(exp.stepsDone, after.step);
  await exp.close();
});

test("set() is typed, logs each change by step in changes.jsonl; restore() keeps the branch it leaves", {
  timeout: 120_000,
}, async () => {
  const exp = await experiment("branches");
  await exp.step();
  const snap = await exp.snapshot();
  const settings = await exp.set({ lr: 2e-3 });
  assert.equal(settings.optimizer.lr, 2e-3);
  await exp.step();
  await exp.step();
  await exp.set({ rollout: { temperature: 0.9 } });
  await exp.restore(snap);
  await exp.step();
  const log = readFileSync(join(exp.runDir, "changes.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(
    log.map((e) => [e.event, e.step]),
    [
      ["set", 1],
      ["set", 3],
      ["restore", 3],
    ],
  );
  assert.deepEqual(log[0]?.changed, { "optimizer.lr": [3e-3, 2e-3] });
  assert.equal(log[2]?.branch, "branch-001");
  const config = JSON.parse(readFileSync(join(exp.runDir, "config.json"), "utf8"));
  assert.equal(config.optimizer.lr, 3e-3, "config.json is the restored settings again");
  assert.ok(existsSync(join(exp.runDir, "branches", "branch-001.arrow")));
  const runs = notebook.readRunMetrics(exp.runDir);
  assert.deepEqual(
    runs.map((r) => [r.name, r.metrics.numRows]),
    [
      ["branches", 2],
      ["branches/branch-001", 3],
    ],
  );
  await exp.close();
});

test("run(n, { distributions: true }) keeps each step's per-response values", {
  timeout: 120_000,
}, async () => {
  const exp = await experiment("distributions");
  await exp.run(3, { distributions: true });
  const lengths = exp.distributions("response_length");
  assert.deepEqual([...lengths.keys()], [1, 2, 3]);
  assert.ok([...lengths.values()].every((v) => v.length === 32 && v.every((n) => n >= 1 && n <= 2)));
  const spec = notebook.distributionSpec(exp.distributions("score"), "score");
  assert.equal(spec.data[1]?.mode, "markers", "several steps: the heatmap over them");
  assert.throws(
    () => exp.distributions("nope" as never),
    /allowed: score, reward, response_length, advantage/,
  );
  await exp.close();
});

test("a notebook run again replaces its idle experiment by name (models freed), or reuses it, or is refused; the list shows state", {
  timeout: 120_000,
}, async () => {
  const first = await experiment("again");
  await first.step();
  const reused = await cluster.experiment({ ...config, name: "again", ifExists: "reuse" });
  assert.equal(reused.id, first.id);
  assert.equal(reused.stepsDone, 1);
  await assert.rejects(
    cluster.experiment({ ...config, name: "again", ifExists: "error" }),
    /experiment "again" exists already: .* \(step 1\/100\)/,
  );
  const second = await experiment("again");
  assert.notEqual(second.id, first.id);
  const same = (await cluster.experiments()).filter((e) => e.name === "again");
  assert.deepEqual(
    same.map((e) => e.id),
    [second.id],
    "the old one is gone from the controller",
  );
  const models = (await cluster.status()).workers
    .flatMap((w) => w.models)
    .filter((m) => m.split(".")[1] === "again");
  assert.equal(models.length, 1, `only the new actor is loaded: ${models.join(", ")}`);
  const rows = await notebook.experimentsTable(cluster);
  const row = rows.find((r) => r.id === second.id);
  assert.equal(row?.state, "idle");
  assert.equal(row?.step, "0/100");
  assert.match(String(row?.models), /^rank 0: actor$/);
  assert.match(String(second), /^Experiment\(again .*: step 0\/100, idle, on cpu, /);
  assert.throws(() => prepareConfig({ ...config, ifExists: "maybe" as never }), /ifExists/);
  await second.close();
});

test("exp.validate() from the client runs validation alone and returns verl's val-core metrics", {
  timeout: 120_000,
}, async () => {
  const val = writeNextDigitHeldOut(join(dir.path, "val-data"));
  const exp = await cluster.experiment({
    ...config,
    name: "validate-alone",
    runDir: join(dir.path, "validate-alone"),
    data: { ...config.data, val },
    validation: { everySteps: 0 },
  });
  try {
    const { step, metrics } = await exp.validate();
    assert.equal(step, 0);
    const key = "val-core/tiller/next-digit/acc/mean@1";
    assert.ok(Number.isFinite(metrics[key]), `${key} in ${Object.keys(metrics).join(", ")}`);
    assert.ok((metrics[key] ?? -1) >= 0 && (metrics[key] ?? 2) <= 1);
  } finally {
    await exp.close();
  }
});
