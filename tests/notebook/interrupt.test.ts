// The Jupyter front end's Interrupt (jupyter_client's interrupt_kernel: a SIGINT to the tslab
// kernel) during a cell running `await exp.run(500)`: the controller stops the step in progress at
// its next stage boundary, the experiment is free, the step stays in progress and a later cell
// finishes it. A real kernel, controller and CPU worker.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { readSetupEnv, repoRoot } from "../../scripts/setup.js";
import { type Cluster, connect } from "../../src/index.js";
import type { ExperimentConfig } from "../../src/rl/config.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { runPython, tempDir } from "../helpers/python.js";
import { killAll, tiller } from "../helpers/runtime.js";

interface Output {
  type: string;
  text: string;
}

const dir = tempDir("interrupt");
const address = `ipc://${dir.path}/c.sock`;
let cluster: Cluster;
let config: ExperimentConfig;
before(async () => {
  const model = join(dir.path, "model");
  await writeTinyModel(model, { seed: 9 });
  config = {
    name: "interrupted",
    runDir: join(dir.path, "run"),
    seed: 11,
    model: { path: model },
    data: { train: writeNextDigitData(join(dir.path, "data")), maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 2 },
    tokensPerMicroBatch: 1024,
    optimizer: { lr: 3e-3 },
    totalSteps: 500,
    // 100 ms per response, 32 responses scored one after another: a score stage of 3.2 s, so an
    // Interrupt a few seconds into the run lands inside a step.
    reward: {
      fn: {
        module: fileURLToPath(new URL("../helpers/reward-fns.js", import.meta.url)),
        exportName: "slowNextDigit",
      },
    },
  };
  tiller(["controller", "--bind", address, "--cpu", "1"], { TILLER_TEST_REWARD_MS: "100" });
  cluster = await connect(address, { timeoutMs: 20_000 });
  await cluster.waitForWorkers(1, 30_000);
});
after(async () => {
  await cluster?.shutdown().catch(() => undefined);
  cluster?.close();
  killAll();
  dir.cleanup();
});

test("the kernel's Interrupt stops a controller-run exp.run() inside its step; a later cell finishes that step", {
  timeout: 240_000,
}, () => {
  const jupyterPath = readSetupEnv().jupyterPath;
  assert.ok(jupyterPath, "setup registered no tslab kernel (.tiller/env.json has no jupyterPath)");
  const index = JSON.stringify(join(repoRoot, "dist", "src", "index.js"));
  const state =
    "console.log(JSON.stringify({ step: s.step, busy: s.busy, stagesDone: s.inProgress?.stagesDone ?? null, pausedAt: exp.pausedAt ?? null }))";
  const cells = [
    `import { connect } from ${index};
const lab = await connect(${JSON.stringify(address)});
const exp = await lab.experiment(${JSON.stringify(config)});
console.log("ready")`,
    "const rows = await exp.run(500, { progress: false });",
    // The abandoned cell's run() returns once the controller stopped, after the stage in progress.
    `await new Promise((r) => setTimeout(r, 4000));
const s = await exp.refresh();
${state}`,
    `await new Promise((r) => setTimeout(r, 2500));
const later = await exp.refresh();
console.log(later.step)`,
    `const finished = await exp.continueStep();
console.log(JSON.stringify({ step: finished.step, done: exp.stepsDone, inProgress: exp.status.inProgress }))`,
  ];
  const cellsFile = join(dir.path, "cells.json");
  writeFileSync(cellsFile, JSON.stringify(cells));
  const outputsFile = join(dir.path, "outputs.json");
  // Interrupt cell 1 five seconds in: the second step's score stage (steps take ~3.5 s).
  runPython("interrupt_kernel.py", [jupyterPath, dir.path, cellsFile, "1", "5", outputsFile], {
    timeoutMs: 200_000,
  });
  const outputs = JSON.parse(readFileSync(outputsFile, "utf8")) as Output[][];
  const text = (cell: number) =>
    (outputs[cell] ?? [])
      .filter((o) => o.type === "stream")
      .map((o) => o.text)
      .join("");
  assert.equal(text(0), "ready\n", JSON.stringify(outputs[0]));
  assert.ok(
    outputs[1]?.some((o) => o.type === "interrupted"),
    `the run cell was interrupted: ${JSON.stringify(outputs[1])}`,
  );
  const stopped = JSON.parse(text(2)) as {
    step: number;
    busy: string | null;
    stagesDone: string[] | null;
    pausedAt: string | null;
  };
  assert.equal(stopped.busy, null, "the controller's run ended");
  assert.ok(stopped.step >= 1 && stopped.step < 10, `steps done before the Interrupt: ${stopped.step}`);
  assert.ok(stopped.stagesDone && stopped.stagesDone.length > 0, "the step in progress is kept");
  const next = ["rollout", "score", "filter", "old_logprobs", "ref", "advantages", "update", "sync"].find(
    (s) => !stopped.stagesDone?.includes(s),
  );
  assert.equal(stopped.pausedAt, `before:${next}`, "pausedAt names the stage the step stopped before");
  assert.equal(Number(text(3)), stopped.step, "no step ran after");
  const finished = JSON.parse(text(4)) as {
    step: number;
    done: number;
    inProgress: unknown;
  };
  assert.deepEqual(finished, { step: stopped.step + 1, done: stopped.step + 1, inProgress: null });
});
