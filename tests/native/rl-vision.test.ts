// GRPO with images on the real engine (fp32 CPU): the colour-square task read from Parquet in
// verl's multimodal layout, a tiny random Qwen2.5-VL learning to name the square's colour (the
// prompt text is the same for every row, so only the image tells), held-out images validated
// before and after, rollout and training logprobs compared, the rollouts table carrying each
// prompt's images, and a frozen vision tower left untouched by the updates.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ExperimentRun } from "../../src/controller/experiment.js";
import { type ExperimentConfig, resolveConfig } from "../../src/rl/config.js";
import { colourSquareRows, prepareColourSquare } from "../../src/rl/tasks/colour-square.js";
import { localRank } from "../../src/worker/local.js";
import { runPython, tempDir } from "../helpers/python.js";

const dir = tempDir("rl-vision");
let base: ExperimentConfig;
let trainParquet = "";
let valParquet = "";
before(async () => {
  const setup = await prepareColourSquare(dir.path);
  trainParquet = join(dir.path, "data", "train.parquet");
  runPython("vl_parquet.py", [setup.dataFile, trainParquet]);
  const valJsonl = join(dir.path, "data", "val.jsonl");
  writeFileSync(
    valJsonl,
    `${colourSquareRows(48, 99)
      .map((r) => JSON.stringify(r))
      .join("\n")}\n`,
  );
  valParquet = join(dir.path, "data", "val.parquet");
  runPython("vl_parquet.py", [valJsonl, valParquet]);
  base = { ...setup.config, data: { ...setup.config.data, train: trainParquet, val: valParquet } };
});
after(() => dir.cleanup());

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

function accuracy(metrics: Record<string, number>): number {
  const key = Object.keys(metrics).find((k) => /^val-core\/tiller\/colour-square\/acc\/mean@/.test(k));
  assert.ok(key, `no validation accuracy among ${Object.keys(metrics).join(", ")}`);
  return metrics[key] as number;
}

test("GRPO learns which colour the square is from Parquet rows with images; held-out images too", async () => {
  const local = localRank();
  const run = await ExperimentRun.create(
    resolveConfig({ ...base, runDir: join(dir.path, "runs", "learn"), totalSteps: 30 }),
    local.call,
  );
  try {
    const before = accuracy((await run.validate()).metrics);
    const scores: number[] = [];
    let probsDiff = 0;
    for (let i = 0; i < 30; i++) {
      const m = await run.runStep();
      scores.push(m["critic/score/mean"] as number);
      const diff = m["training/rollout_probs_diff_max"];
      assert.equal(typeof diff, "number", "rollout vs training probabilities are reported");
      probsDiff = Math.max(probsDiff, diff as number);
    }
    const afterTraining = accuracy((await run.validate()).metrics);
    const first = mean(scores.slice(0, 5));
    const last = mean(scores.slice(-5));
    console.log(
      `colour-square: reward ${first.toFixed(2)} (first 5 steps) -> ${last.toFixed(2)} (last 5); held-out accuracy ${before.toFixed(2)} -> ${afterTraining.toFixed(2)}; rollout vs training probs max diff ${probsDiff.toExponential(2)}`,
    );
    // A policy blind to the image can do no better than the commonest colour's share (about 1/3).
    assert.ok(first < 0.45, `first steps already at ${first}`);
    assert.ok(last > 0.85, `reward after 30 steps only ${last}`);
    assert.ok(before < 0.5 && afterTraining > 0.85, `held-out accuracy ${before} -> ${afterTraining}`);
    assert.ok(probsDiff < 1e-4, `rollout and training probabilities differ by ${probsDiff}`);
    const rollouts = run.rollouts();
    const images = rollouts.getChild("images");
    assert.ok(images, "the rollouts table has an images column");
    for (let row = 0; row < rollouts.numRows; row++) {
      const cell = images.get(row) as { toArray(): ArrayLike<unknown> } | null;
      const urls: string[] = Array.from(cell?.toArray() ?? [], String);
      assert.equal(urls.length, 1);
      assert.match(urls[0] ?? "", /^data:image\/png;base64,/);
    }
  } finally {
    await run.close();
    local.dispose();
  }
});

test("with freezeVisionTower the updates leave the vision tower as loaded and train the rest", async () => {
  const local = localRank();
  const run = await ExperimentRun.create(
    resolveConfig({
      ...base,
      name: "frozen",
      runDir: join(dir.path, "runs", "frozen"),
      model: { ...base.model, freezeVisionTower: true },
      totalSteps: 2,
    }),
    local.call,
  );
  const params = () => {
    const actor = [...local.state.models.entries()].find(([name]) => name.startsWith("actor."))?.[1];
    assert.ok(actor);
    return new Map(actor.parameters().map((p) => [p.name, Float32Array.from(p.data as Float32Array)]));
  };
  try {
    const start = params();
    await run.runStep();
    await run.runStep();
    const end = params();
    let visionMoved = 0;
    let textMoved = 0;
    for (const [name, before] of start) {
      const after = end.get(name) as Float32Array;
      const moved = before.some((v, i) => v !== after[i]);
      if (name.startsWith("visual.")) visionMoved += moved ? 1 : 0;
      else textMoved += moved ? 1 : 0;
    }
    assert.equal(visionMoved, 0, "vision tensors changed");
    assert.ok(textMoved > 0, "nothing of the language model was trained");
  } finally {
    await run.close();
    local.dispose();
  }
});
