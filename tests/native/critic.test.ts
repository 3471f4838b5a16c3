// PPO's value model: the clipped value loss against a torch transcription of verl's
// compute_value_loss (loss, clip fraction, gradient) in every aggregation; the critic on a real
// tiny model: values laid out as logprobs, regression onto fixed targets lowers the loss, one or
// two micro-batches give the same update, save/load keeps the values.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Critic, type LossAggMode, valueLoss } from "../../src/index.js";
import { writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { runPython, tempDir } from "../helpers/python.js";

const dir = tempDir("critic");
let modelPath = "";
before(async () => {
  modelPath = join(dir.path, "model");
  await writeTinyModel(modelPath, { seed: 5 });
});
after(() => dir.cleanup());

function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const AGG_MODES: LossAggMode[] = [
  "token-mean",
  "token-sum",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
];

test("valueLoss equals verl's compute_value_loss (loss, vf_clipfrac, vpred mean, gradient) in every aggregation", () => {
  const cases = AGG_MODES.flatMap((aggMode, k) => {
    const rand = random(11 + k);
    const lengths = [7, 3, 10, 1];
    const n = lengths.reduce((a, b) => a + b, 0);
    const cu = Int32Array.from([
      0,
      ...lengths.map((_, i) => lengths.slice(0, i + 1).reduce((a, b) => a + b, 0)),
    ]);
    const values = Float32Array.from({ length: n }, () => rand() * 2 - 1);
    // Predictions up to 1.5 from the old values: many beyond the clip range of 0.2 / 0.5.
    const vpreds = values.map((v) => v + (rand() - 0.5) * 3);
    const returns = Float32Array.from({ length: n }, () => rand() * 2 - 1);
    const mask = Float32Array.from({ length: n }, (_, i) => (i === 0 || (i >= 7 && i < 10) ? 0 : 1));
    const inputs = { vpreds, values, returns, mask, cuSeqlens: cu };
    const counts = { tokens: mask.reduce((a, b) => a + b, 0), sequences: lengths.length };
    return [0.2, 0.5].map((cliprangeValue) => ({
      inputs,
      counts,
      config: { cliprangeValue, aggMode, lossScaleFactor: 12 },
    }));
  });
  const file = join(dir.path, "cases.json");
  const plain = (x: unknown) => (ArrayBuffer.isView(x) ? Array.from(x as Float32Array) : x);
  writeFileSync(
    file,
    JSON.stringify(
      cases.map((c) => ({
        ...c,
        inputs: Object.fromEntries(Object.entries(c.inputs).map(([k, v]) => [k, plain(v)])),
      })),
    ),
  );
  const expected = JSON.parse(runPython("value_loss_reference.py", [file])) as {
    loss: number;
    vfClipfrac: number;
    vpredMean: number;
    gradVpreds: number[];
  }[];
  let worst = 0;
  let clipped = 0;
  cases.forEach((c, i) => {
    const got = valueLoss(c.inputs, c.counts, c.config);
    const ref = expected[i] as (typeof expected)[number];
    const what = JSON.stringify(c.config);
    for (const [name, a, b] of [
      ["loss", got.loss, ref.loss],
      ["vfClipfrac", got.vfClipfrac, ref.vfClipfrac],
      ["vpredMean", got.vpredMean, ref.vpredMean],
    ] as const) {
      assert.ok(Math.abs(a - b) <= 1e-6 + 1e-6 * Math.abs(b), `${what} ${name}: ${a} vs ${b}`);
    }
    got.gradVpreds.forEach((g, t) => {
      const d = Math.abs(g - (ref.gradVpreds[t] as number));
      worst = Math.max(worst, d);
      assert.ok(d <= 1e-6, `${what} grad[${t}]: ${g} vs ${ref.gradVpreds[t]}`);
    });
    clipped += got.vfClipfrac;
  });
  console.log(`${cases.length} cases; max |grad − verl| = ${worst.toExponential(2)}`);
  assert.ok(clipped > 0, "some predictions were clipped");
});

function batch(seed: number) {
  const rand = random(seed);
  const sequences = [5, 7, 4].map((n) => Int32Array.from({ length: n }, () => 2 + Math.floor(rand() * 12)));
  const tokens = Int32Array.from(sequences.flatMap((s) => Array.from(s)));
  const cu = Int32Array.from([0, 5, 12, 16]);
  const predicted = tokens.length - 3;
  return { sequences, tokens, cu, predicted, rand };
}

test("critic: values per predicted token; regression onto fixed returns lowers the value loss; 1 or 2 micro-batches give the same update (1e-5)", async () => {
  const { tokens, cu, predicted, rand } = batch(3);
  const returns = Float32Array.from({ length: predicted }, () => rand() * 2 - 1);
  const mask = new Float32Array(predicted).fill(1);
  const whole = await Critic.load(modelPath, { seed: 9 });
  const split = await Critic.load(modelPath, { seed: 9 });
  try {
    const values = await whole.values(tokens, cu);
    assert.equal(values.length, predicted);
    assert.deepEqual(Array.from(await split.values(tokens, cu)), Array.from(values), "same seed: same head");
    for (const c of [whole, split]) c.initOptimizer({ lr: 1e-3, weightDecay: 0, maxGradNorm: 1 });
    const counts = { tokens: predicted, sequences: 3 };
    const config = { cliprangeValue: 10 };
    const losses: number[] = [];
    let worst = 0;
    for (let step = 0; step < 8; step++) {
      const old = await whole.values(tokens, cu);
      const r = await whole.valueStep(tokens, cu, { values: old, returns, mask }, counts, config);
      losses.push(r.vfLoss);
      await whole.optimizerStep();
      // The same update in two micro-batches (sequence 0 | sequences 1, 2), counts of the whole.
      const oldSplit = await split.values(tokens, cu);
      const first = 4; // predicted tokens of sequence 0
      await split.valueStep(
        tokens.slice(0, 5),
        Int32Array.from([0, 5]),
        { values: oldSplit.slice(0, first), returns: returns.slice(0, first), mask: mask.slice(0, first) },
        counts,
        config,
      );
      await split.valueStep(
        tokens.slice(5),
        Int32Array.from([0, 7, 11]),
        { values: oldSplit.slice(first), returns: returns.slice(first), mask: mask.slice(first) },
        counts,
        config,
      );
      await split.optimizerStep();
      if (step === 0) {
        // After one update (AdamW's first step is lr·sign-like, so later ones amplify rounding).
        const a1 = await whole.values(tokens, cu);
        const b1 = await split.values(tokens, cu);
        a1.forEach((v, i) => {
          worst = Math.max(worst, Math.abs(v - (b1[i] as number)));
        });
      }
    }
    const a = await whole.values(tokens, cu);
    console.log(
      `value loss ${losses.map((l) => l.toFixed(4)).join(" → ")}; max |1 vs 2 micro-batches| = ${worst.toExponential(2)}`,
    );
    assert.ok(worst <= 1e-5, `1 vs 2 micro-batches differ by ${worst}`);
    assert.ok(
      (losses.at(-1) as number) < 0.5 * (losses[0] as number),
      `loss ${losses[0]} → ${losses.at(-1)}`,
    );
    // Save and load: the same values, head included.
    const saved = join(dir.path, "saved-critic");
    await whole.save(saved);
    const again = await Critic.load(saved, { seed: 123 });
    try {
      assert.deepEqual(Array.from(await again.values(tokens, cu)), Array.from(a));
    } finally {
      again.dispose();
    }
  } finally {
    whole.dispose();
    split.dispose();
  }
});

test("critic and valueLoss refuse bad arguments naming the field", async () => {
  const { tokens, cu, predicted } = batch(4);
  const critic = await Critic.load(modelPath);
  try {
    const f = new Float32Array(predicted);
    await assert.rejects(
      critic.valueStep(
        tokens,
        cu,
        { values: f, returns: new Float32Array(2), mask: f },
        { tokens: 1, sequences: 1 },
      ),
      /perToken\.returns/,
    );
    await assert.rejects(
      critic.valueStep(tokens, cu, { values: f, returns: f, mask: f }, { tokens: 0, sequences: 1 }),
      /counts\.tokens/,
    );
    assert.throws(
      () =>
        valueLoss(
          { vpreds: f, values: f, returns: f, mask: f, cuSeqlens: Int32Array.from([0, predicted]) },
          { tokens: 1, sequences: 1 },
          { cliprangeValue: -1 },
        ),
      /config\.cliprangeValue/,
    );
  } finally {
    critic.dispose();
  }
});
