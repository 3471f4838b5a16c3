// The RL policy loss against a plain torch transcription of verl's formulas (loss, every metric,
// gradients), hand-worked clipping cases, and the micro-batch arithmetic through a real model:
// one micro-batch or four with the mini-batch's counts give the same gradients and update.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  type LossAggMode,
  Model,
  type PolicyLossConfig,
  type PolicyLossInputs,
  type PolicyLossResult,
  policyLoss,
} from "../../src/index.js";
import { runPython, tempDir } from "../helpers/python.js";

const AGG_MODES: LossAggMode[] = [
  "token-mean",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
];
const dir = tempDir("policy-loss");
before(() => {
  runPython("model_folder.py", ["make", dir.path]);
});
after(() => dir.cleanup());

// Deterministic uniform [0, 1) numbers (mulberry32).
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

function close(actual: number, expected: number, what: string, atol = 1e-6, rtol = 1e-6): void {
  assert.ok(
    Math.abs(actual - expected) <= atol + rtol * Math.abs(expected),
    `${what}: ${actual} vs ${expected}`,
  );
}

function closeArrays(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  atol = 1e-6,
): number {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i] ?? 0;
    const e = expected[i] ?? 0;
    worst = Math.max(worst, Math.abs(a - e));
    close(a, e, `${what}[${i}]`, atol);
  }
  return worst;
}

function randomInputs(seed: number, lengths: number[]): PolicyLossInputs {
  const rand = random(seed);
  const n = lengths.reduce((a, b) => a + b, 0);
  const make = (f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));
  const logprobs = make(() => -3 * rand());
  // Advantages are per sequence (as GRPO's), mask: a prompt part of each sequence is 0.
  const cu = [0];
  for (const l of lengths) cu.push((cu[cu.length - 1] ?? 0) + l);
  const seqOf = (i: number) => cu.findIndex((b) => b > i) - 1;
  const seqAdvantage = lengths.map(() => 4 * rand() - 2);
  const promptLength = lengths.map((l) => Math.floor(rand() * l * 0.5));
  return {
    logprobs,
    // Ratios spread over [e^-0.6, e^0.6]: many tokens outside [0.8, 1.28], some beyond c = 3 for the wide cases.
    oldLogprobs: make((i) => (logprobs[i] ?? 0) + (rand() - 0.5) * 1.2 * (seqOf(i) === 0 ? 2.5 : 1)),
    advantages: make((i) => seqAdvantage[seqOf(i)] ?? 0),
    mask: make((i) => (i - (cu[seqOf(i)] ?? 0) >= (promptLength[seqOf(i)] ?? 0) ? 1 : 0)),
    entropy: make(() => 2 * rand()),
    refLogprobs: make((i) => (logprobs[i] ?? 0) + (rand() - 0.5) * 0.8),
    cuSeqlens: Int32Array.from(cu),
  };
}

function counts(inputs: PolicyLossInputs) {
  const cu = inputs.cuSeqlens;
  let sequences = 0;
  for (let s = 0; s + 1 < cu.length; s++) {
    if (inputs.mask.slice(cu[s], cu[s + 1]).some((m) => m > 0)) sequences++;
  }
  return { tokens: inputs.mask.reduce((a, b) => a + b, 0), sequences };
}

test("policyLoss matches verl's formulas: loss, every metric and the gradients, for each mode and penalty", () => {
  const configs: PolicyLossConfig[] = [];
  for (const aggMode of AGG_MODES) {
    configs.push({ aggMode, lossScaleFactor: 16 });
    configs.push({
      aggMode,
      clipRatioHigh: 0.28,
      entropyCoeff: 0.01,
      kl: { type: "k3", coeff: 0.1 },
      lossScaleFactor: 16,
    });
  }
  for (const type of ["k1", "k2", "abs", "low_var_kl"] as const)
    configs.push({ kl: { type, coeff: 0.5 }, clipRatioC: 2 });
  const cases = configs.map((config, i) => {
    const inputs = randomInputs(100 + i, [9, 5, 12, 7]);
    return { inputs, counts: counts(inputs), config };
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
  const expected = JSON.parse(runPython("policy_loss_reference.py", [file])) as PolicyLossResult[];
  let worstGrad = 0;
  let clipped = 0;
  let dualClipped = 0;
  cases.forEach((c, i) => {
    const what = JSON.stringify(c.config);
    const got = policyLoss(c.inputs, c.counts, c.config);
    const ref = expected[i] as PolicyLossResult;
    close(got.loss, ref.loss, `${what} loss`);
    for (const key of Object.keys(ref.metrics) as (keyof PolicyLossResult["metrics"])[]) {
      close(got.metrics[key], ref.metrics[key], `${what} ${key}`);
    }
    worstGrad = Math.max(worstGrad, closeArrays(got.gradLogprobs, ref.gradLogprobs, `${what} gradLogprobs`));
    closeArrays(got.gradEntropy ?? [], ref.gradEntropy ?? [], `${what} gradEntropy`);
    clipped += got.metrics.pgClipfrac;
    dualClipped += got.metrics.pgClipfracLower;
  });
  console.log(`${cases.length} cases; max |grad - ref| = ${worstGrad.toExponential(2)}`);
  // The random cases exercise both clipping paths.
  assert.ok(clipped > 0 && dualClipped > 0, `clipfrac sum ${clipped}, dual ${dualClipped}`);
});

test("hand-worked tokens: clipped above and below, dual-clip, clip-higher", () => {
  // A, ratio: clipped at 1.2 (A > 0); clipped at 0.8 (A < 0); dual-clipped at c = 3; unclipped;
  // 1.25 with A > 0: clipped at 1.2, not with DAPO's 1.28.
  const advantages = Float32Array.from([1, -1, -1, 1, 1]);
  const ratios = [1.5, 0.5, 4, 0.5, 1.25];
  const oldLogprobs = Float32Array.from([-1, -2, -3, -1.5, -0.7]);
  const logprobs = Float32Array.from(ratios.map((r, i) => (oldLogprobs[i] ?? 0) + Math.log(r)));
  const inputs = {
    logprobs,
    oldLogprobs,
    advantages,
    mask: new Float32Array(5).fill(1),
    cuSeqlens: Int32Array.from([0, 5]),
  };
  const ratio = Array.from(logprobs, (lp, i) => Math.exp(lp - (oldLogprobs[i] ?? 0)));
  const grpo = policyLoss(inputs, { tokens: 5, sequences: 1 });
  close(grpo.loss, (-1.2 + 0.8 + 3 - (ratio[3] ?? 0) - 1.2) / 5, "GRPO loss", 1e-6);
  close(grpo.metrics.pgClipfrac, 3 / 5, "GRPO clipfrac");
  close(grpo.metrics.pgClipfracLower, 1 / 5, "GRPO clipfrac lower");
  close(grpo.metrics.ppoKl, -ratios.reduce((s, r) => s + Math.log(r), 0) / 5, "ppo_kl", 1e-6);
  // Only the unclipped token moves: d(-A·ratio)/d logp = -A·ratio.
  closeArrays(grpo.gradLogprobs, [0, 0, 0, -(ratio[3] ?? 0) / 5, 0], "GRPO grad");
  const dapo = policyLoss(inputs, { tokens: 5, sequences: 1 }, { clipRatioHigh: 0.28 });
  close(dapo.loss, (-1.28 + 0.8 + 3 - (ratio[3] ?? 0) - (ratio[4] ?? 0)) / 5, "DAPO loss", 1e-6);
  close(dapo.metrics.pgClipfrac, 2 / 5, "DAPO clipfrac");
  closeArrays(dapo.gradLogprobs, [0, 0, 0, -(ratio[3] ?? 0) / 5, -(ratio[4] ?? 0) / 5], "DAPO grad");
});

test("hand-worked aggregation: each mode divides by the counts given", () => {
  // Two sequences, A = -1 and ratio 1 everywhere: every masked token's loss is 1.
  const mask = Float32Array.from([0, 1, 1, 1, 0, 1]);
  const zeros = new Float32Array(6);
  const inputs = {
    logprobs: zeros,
    oldLogprobs: zeros,
    advantages: new Float32Array(6).fill(-1),
    mask,
    cuSeqlens: Int32Array.from([0, 4, 6]),
  };
  const loss = (aggMode: LossAggMode) =>
    policyLoss(inputs, { tokens: 8, sequences: 5 }, { aggMode, lossScaleFactor: 10 }).loss;
  close(loss("token-mean"), 4 / 8, "token-mean");
  close(loss("seq-mean-token-sum"), (3 + 1) / 5, "seq-mean-token-sum");
  close(loss("seq-mean-token-mean"), (1 + 1) / 5, "seq-mean-token-mean");
  close(loss("seq-mean-token-sum-norm"), (3 + 1) / (5 * 10), "seq-mean-token-sum-norm");
});

test("policyLoss and policyStep refuse bad arguments naming the field", async () => {
  const inputs = randomInputs(1, [4, 4]);
  assert.throws(() => policyLoss(inputs, { tokens: 0, sequences: 2 }), /counts\.tokens/);
  assert.throws(
    () => policyLoss(inputs, { tokens: 4, sequences: 2 }, { aggMode: "seq-mean" as LossAggMode }),
    /config\.aggMode.*allowed/,
  );
  assert.throws(
    () => policyLoss(inputs, { tokens: 4, sequences: 2 }, { clipRatioC: 1 }),
    /config\.clipRatioC/,
  );
  assert.throws(
    () => policyLoss({ ...inputs, mask: new Float32Array(3) }, { tokens: 4, sequences: 2 }),
    /inputs\.mask/,
  );
  assert.throws(
    () =>
      policyLoss(
        { ...inputs, refLogprobs: undefined },
        { tokens: 4, sequences: 2 },
        { kl: { type: "k3", coeff: 1 } },
      ),
    /inputs\.refLogprobs/,
  );
  const model = await Model.load(join(dir.path, "qwen2_tied"));
  try {
    const tokens = Int32Array.from([1, 2, 3, 4, 5]);
    const cu = Int32Array.from([0, 5]);
    const four = new Float32Array(4);
    const perToken = { oldLogprobs: four, advantages: four, mask: four };
    await assert.rejects(
      model.policyStep(
        tokens,
        cu,
        { ...perToken, advantages: new Float32Array(5) },
        { tokens: 1, sequences: 1 },
      ),
      /perToken\.advantages/,
    );
    await assert.rejects(
      model.policyStep(tokens, cu, perToken, { tokens: 1, sequences: 1 }, { kl: { type: "k2" } }),
      /perToken\.refLogprobs/,
    );
    await assert.rejects(
      model.policyStep(tokens, cu, perToken, { tokens: 1, sequences: Number.NaN }),
      /counts\.sequences/,
    );
  } finally {
    model.dispose();
  }
});

// Four sequences of the HF reference batch and their reversals; the later half of each is the response.
function modelBatch() {
  const ref = JSON.parse(readFileSync(join(dir.path, "qwen2_tied.json"), "utf8")) as {
    tokens: number[];
    cuSeqlens: number[];
  };
  const sequences: number[][] = [];
  for (let s = 0; s + 1 < ref.cuSeqlens.length; s++)
    sequences.push(ref.tokens.slice(ref.cuSeqlens[s], ref.cuSeqlens[s + 1]));
  sequences.push(...sequences.map((q) => [...q].reverse()));
  return sequences;
}

function pack(sequences: number[][]) {
  const tokens = Int32Array.from(sequences.flat());
  const cu = [0];
  for (const q of sequences) cu.push((cu[cu.length - 1] ?? 0) + q.length);
  return { tokens, cuSeqlens: Int32Array.from(cu) };
}

test("1 vs 4 micro-batches with the mini-batch counts: same gradients (1e-6) and parameters after a step (1e-5)", async () => {
  const sequences = modelBatch();
  const folder = join(dir.path, "qwen2_tied");
  for (const aggMode of AGG_MODES) {
    const config: PolicyLossConfig = {
      aggMode,
      clipRatioHigh: 0.28,
      entropyCoeff: 0.01,
      kl: { type: "k3", coeff: 0.1 },
      lossScaleFactor: 8,
    };
    const whole = await Model.load(folder, { dtype: "float32" });
    const split = await Model.load(folder, { dtype: "float32" });
    try {
      const full = pack(sequences);
      const { logprobs, entropy } = await whole.logprobs(full.tokens, full.cuSeqlens);
      const rand = random(7);
      const predictedCu = Int32Array.from(full.cuSeqlens, (c, s) => c - s);
      const perSeq = sequences.map((q, s) => {
        const n = q.length - 1;
        const start = predictedCu[s] ?? 0;
        const advantage = 2 * rand() - 1;
        const lp = logprobs.slice(start, start + n);
        return {
          oldLogprobs: lp.map((x) => x + (rand() - 0.5) * 0.8),
          advantages: new Float32Array(n).fill(advantage),
          mask: Float32Array.from({ length: n }, (_, j) => (j >= (n - 1) / 2 ? 1 : 0)),
          refLogprobs: lp.map((x) => x + (rand() - 0.5) * 0.4),
        };
      });
      const concat = (key: keyof (typeof perSeq)[number]) =>
        Float32Array.from(perSeq.flatMap((p) => Array.from(p[key])));
      const all = {
        oldLogprobs: concat("oldLogprobs"),
        advantages: concat("advantages"),
        mask: concat("mask"),
        refLogprobs: concat("refLogprobs"),
      };
      const globalCounts = { tokens: all.mask.reduce((a, b) => a + b, 0), sequences: sequences.length };

      const one = await whole.policyStep(full.tokens, full.cuSeqlens, all, globalCounts, config);
      // The engine's loss after its forward is the loss of its logprobs.
      const direct = policyLoss({ ...all, logprobs, entropy, cuSeqlens: predictedCu }, globalCounts, config);
      close(one.loss, direct.loss, `${aggMode}: policyStep vs policyLoss`, 1e-6);
      let summed = 0;
      const metricSums = { pgLoss: 0, pgClipfrac: 0, pgClipfracLower: 0, ppoKl: 0, entropy: 0, klLoss: 0 };
      for (let s = 0; s < sequences.length; s++) {
        const micro = pack([sequences[s] ?? []]);
        const r = await split.policyStep(
          micro.tokens,
          micro.cuSeqlens,
          perSeq[s] as (typeof perSeq)[number],
          globalCounts,
          config,
        );
        summed += r.loss;
        for (const key of Object.keys(metricSums) as (keyof typeof metricSums)[])
          metricSums[key] += r.metrics[key];
      }
      close(summed, one.loss, `${aggMode}: summed micro-batch losses`);
      for (const key of Object.keys(metricSums) as (keyof typeof metricSums)[]) {
        close(metricSums[key], one.metrics[key], `${aggMode}: summed ${key}`);
      }
      const g1 = whole.gradients();
      const g4 = split.gradients();
      let worst = 0;
      let norm = 0;
      g1.forEach((g, i) => {
        const other = g4[i];
        assert.equal(other?.name, g.name);
        worst = Math.max(
          worst,
          closeArrays(other?.data as Float32Array, g.data as Float32Array, `${aggMode} grad ${g.name}`),
        );
        for (const v of g.data as Float32Array) norm += v * v;
      });
      assert.ok(norm > 0, "the loss has a gradient");
      // eps 1e-6: rows of tokens that never occur get ~1e-10 gradients from summation order alone,
      // which Adam's g / (|g| + 1e-8) would turn into 1e-5 parameter differences.
      for (const m of [whole, split])
        m.initOptimizer({ lr: 1e-3, eps: 1e-6, weightDecay: 0.01, maxGradNorm: 1 });
      await whole.optimizerStep();
      await split.optimizerStep();
      const p1 = whole.parameters();
      const p4 = split.parameters();
      let worstParam = 0;
      p1.forEach((p, i) => {
        worstParam = Math.max(
          worstParam,
          closeArrays(
            p4[i]?.data as Float32Array,
            p.data as Float32Array,
            `${aggMode} param ${p.name}`,
            1e-5,
          ),
        );
      });
      console.log(
        `${aggMode}: loss ${one.loss.toFixed(5)} clipfrac ${one.metrics.pgClipfrac.toFixed(3)}; max |grad 1 - grad 4| = ${worst.toExponential(2)}` +
          ` (|grad| ${Math.sqrt(norm).toExponential(2)}), max |param 1 - param 4| after AdamW = ${worstParam.toExponential(2)}`,
      );
    } finally {
      whole.dispose();
      split.dispose();
    }
  }
});
