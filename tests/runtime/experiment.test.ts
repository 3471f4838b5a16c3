// The RL loop as a user drives it: a real controller and CPU worker, an experiment built from a
// typed config through the client, stages called one by one, step(), run(n) with progress and
// metrics events, Arrow tables back, checkpoint and resume, and `npm run quickstart` end to end.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { connect, type TillerError } from "../../src/index.js";
import type { ExperimentConfig } from "../../src/rl/config.js";
import { MetricsLog } from "../../src/rl/metrics.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";
import { killAll, tiller } from "../helpers/runtime.js";

const dir = tempDir("experiment");
let config: ExperimentConfig;
before(async () => {
  const model = join(dir.path, "model");
  await writeTinyModel(model, { seed: 5 });
  config = {
    name: "client",
    runDir: join(dir.path, "run"),
    seed: 3,
    model: { path: model },
    data: { train: writeNextDigitData(join(dir.path, "data")), maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 2 },
    tokensPerMicroBatch: 1024,
    optimizer: { lr: 3e-3 },
    totalSteps: 3,
  };
});
after(() => {
  killAll();
  dir.cleanup();
});

test("an experiment through the controller: stages, step, run with events, tables, checkpoint, resume", {
  timeout: 120_000,
}, async () => {
  const address = `ipc://${dir.path}/c.sock`;
  tiller(["controller", "--bind", address, "--cpu", "1"]);
  const cluster = await connect(address, { timeoutMs: 20_000 });
  try {
    await cluster.waitForWorkers(1, 30_000);
    // A bad config never reaches the controller: the client names the field.
    await assert.rejects(
      cluster.experiment({ ...config, promptsPerStep: 2.5 }),
      /promptsPerStep: 2\.5 must be an integer/,
    );
    // One the client cannot check (a missing folder) comes back from the controller, named.
    await assert.rejects(
      cluster.experiment({ ...config, model: { path: join(dir.path, "nope") } }),
      (e: TillerError) => {
        assert.match(e.message, /nope/);
        return true;
      },
    );
    const exp = await cluster.experiment(config);
    assert.equal(exp.status.datasetSize, 1000);
    const r = await exp.rollout();
    assert.deepEqual(r.stagesDone, ["rollout"]);
    assert.equal(r.samples, 32);
    await assert.rejects(exp.update(), /update: run score, old_logprobs, ref, advantages first/);
    for (const stage of ["score", "filter", "oldLogprobs", "ref", "advantages", "update", "sync"] as const)
      await exp[stage]();
    assert.equal(exp.stepsDone, 1);
    const rollouts = await exp.rollouts();
    assert.equal(rollouts.numRows, 32);
    assert.ok(rollouts.schema.fields.some((f) => f.name === "advantages"));

    const row = await exp.step();
    assert.equal(row.step, 2);
    const events: string[] = [];
    const rows: number[] = [];
    await exp.run(1, { onProgress: (e) => events.push(e.stage), onMetrics: (m) => rows.push(m.step) });
    assert.deepEqual(events, [
      "rollout",
      "score",
      "filter",
      "old_logprobs",
      "ref",
      "advantages",
      "update",
      "sync",
      "done",
    ]);
    assert.deepEqual(rows, [3]);
    const metrics = await exp.metrics();
    assert.deepEqual(Array.from(metrics.getChild("step")?.toArray() ?? []), [1, 2, 3]);
    const onDisk = await MetricsLog.readFile(join(exp.runDir, "metrics.arrow"));
    assert.equal(onDisk.length, 3);

    const saved = await exp.save();
    assert.match(saved, /step-000003$/);
    const exported = await exp.export(join(dir.path, "exported"));
    assert.ok(existsSync(join(exported, "config.json")) && existsSync(join(exported, "tokenizer.json")));
    await exp.close();

    const resumed = await cluster.resume(exp.runDir, { totalSteps: 4 });
    assert.equal(resumed.stepsDone, 3);
    await resumed.run();
    assert.equal(resumed.stepsDone, 4);
    const all = await resumed.metrics();
    assert.deepEqual(Array.from(all.getChild("step")?.toArray() ?? []), [1, 2, 3, 4]);
    await resumed.close();
  } finally {
    await cluster.shutdown().catch(() => undefined);
    cluster.close();
  }
});

test("npm run quickstart: GRPO on the built-in task, reward rises, metrics.arrow and an HTML report", {
  timeout: 300_000,
}, async () => {
  const home = join(dir.path, "home");
  const runDir = join(dir.path, "quickstart");
  const q = tiller(["quickstart", "--run-dir", runDir, "--assets", join(dir.path, "assets")], {
    TILLER_HOME: home,
  });
  const code = await q.exited;
  const out = q.output();
  assert.equal(code, 0, out);
  const m = /mean reward: first (\d+) steps ([\d.]+) → last \d+ steps ([\d.]+)/.exec(out);
  assert.ok(m, out);
  const [first, last] = [Number(m[2]), Number(m[3])];
  console.log(`quickstart: mean reward first ${m[1]} steps ${first} → last ${m[1]} steps ${last}`);
  assert.ok(last > first + 0.3, `reward did not rise clearly: ${first} → ${last}`);
  const metrics = await MetricsLog.readFile(join(runDir, "metrics.arrow"));
  // Step 0 is the validation before training, then one row per step; the last one validates too.
  assert.equal(metrics.length, 81);
  const heldOut = "val-core/tiller/next-digit/acc/mean@1";
  assert.deepEqual(
    metrics.rows.filter((r) => r[heldOut] !== undefined).map((r) => r.step),
    [0, 80],
  );
  const h =
    /held-out accuracy \(greedy, 100 four-digit prompts never trained on\): ([\d.]+) before → ([\d.]+) after/.exec(
      out,
    );
  assert.ok(h, out);
  console.log(`quickstart: held-out accuracy ${h[1]} → ${h[2]}`);
  assert.equal(Number(h[2]), Number((metrics.rows.at(-1)?.[heldOut] ?? Number.NaN).toFixed(3)));
  const report = readFileSync(join(runDir, "report.html"), "utf8");
  assert.match(report, /critic\/score\/mean/);
  assert.ok(!/src="https?:/.test(report), "the report fetches nothing");
});
