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
  type PolicyLossMode,
  type PolicyLossResult,
  policyLoss,
} from "../../src/index.js";
import { runPython, tempDir } from "../helpers/python.js";

const AGG_MODES: LossAggMode[] = [
  "token-mean",
  "token-sum",
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

// verl's batch_num_tokens and global_batch_size: every sequence counts, an all-masked one too.
function counts(inputs: PolicyLossInputs) {
  return { tokens: inputs.mask.reduce((a, b) => a + b, 0), sequences: inputs.cuSeqlens.length - 1 };
}

/** Runs the cases through the engine and the torch transcription of verl; returns the worst |grad| difference. */
function compareWithReference(
  cases: {
    inputs: PolicyLossInputs;
    counts: { tokens: number; sequences: number };
    config: PolicyLossConfig;
  }[],
  name: string,
): { worstGrad: number; worstLoss: number; results: PolicyLossResult[] } {
  const file = join(dir.path, `${name}.json`);
  const plain = (x: unknown) => (ArrayBuffer.isView(x) ? Array.from(x as Float32Array) : x);
  writeFileSync(
    file,
    JSON.stringify(
      cases.map((c) => ({
        ...c,
        inputs: Object.fromEntries(
          Object.entries(c.inputs)
            .filter(([, v]) => v !== undefined)
            .map(([k, v]) => [k, plain(v)]),
        ),
      })),
    ),
  );
  const expected = JSON.parse(runPython("policy_loss_reference.py", [file])) as PolicyLossResult[];
  let worstGrad = 0;
  let worstLoss = 0;
  const results = cases.map((c, i) => {
    const what = JSON.stringify(c.config);
    const got = policyLoss(c.inputs, c.counts, c.config);
    const ref = expected[i] as PolicyLossResult;
    close(got.loss, ref.loss, `${what} loss`, 1e-5, 1e-5);
    worstLoss = Math.max(worstLoss, Math.abs(got.loss - ref.loss));
    assert.deepEqual(
      Object.keys(got.metrics).sort(),
      Object.keys(ref.metrics).sort(),
      `${what}: metrics measured`,
    );
    for (const key of Object.keys(ref.metrics) as (keyof PolicyLossResult["metrics"])[]) {
      close(got.metrics[key] ?? Number.NaN, ref.metrics[key] ?? Number.NaN, `${what} ${key}`, 1e-5, 1e-5);
    }
    worstGrad = Math.max(
      worstGrad,
      closeArrays(got.gradLogprobs, ref.gradLogprobs, `${what} gradLogprobs`, 1e-5),
    );
    closeArrays(got.gradEntropy ?? [], ref.gradEntropy ?? [], `${what} gradEntropy`, 1e-5);
    return got;
  });
  return { worstGrad, worstLoss, results };
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
  const { worstGrad, results } = compareWithReference(cases, "vanilla");
  const clipped = results.reduce((n, r) => n + (r.metrics.pgClipfrac ?? 0), 0);
  const dualClipped = results.reduce((n, r) => n + (r.metrics.pgClipfracLower ?? 0), 0);
  console.log(`${cases.length} cases; max |grad - ref| = ${worstGrad.toExponential(2)}`);
  // The random cases exercise both clipping paths.
  assert.ok(clipped > 0 && dualClipped > 0, `clipfrac sum ${clipped}, dual ${dualClipped}`);
});

const NEW_MODES: PolicyLossMode[] = ["gspo", "sapo", "gpg", "clip_cov", "kl_cov", "geo_mean", "cispo"];

test("each of verl's newer loss modes (gspo, sapo, gpg, clip_cov, kl_cov, geo_mean, cispo) equals verl's formula: loss, metrics, gradients, in every aggregation, with rollout IS weights", () => {
  const cases: Parameters<typeof compareWithReference>[0] = [];
  let seed = 500;
  for (const lossMode of NEW_MODES) {
    for (const aggMode of AGG_MODES) {
      // Sequence 1 is wholly masked (a response with no counted token); sequence 0 has ratios far outside the clip.
      const inputs = randomInputs(seed++, [9, 3, 12, 7, 1]);
      inputs.mask.fill(0, inputs.cuSeqlens[1], inputs.cuSeqlens[2]);
      const config: PolicyLossConfig = {
        lossMode,
        aggMode,
        lossScaleFactor: 16,
        clipRatioHigh: 0.28,
        entropyCoeff: 0.01,
        clipCovRatio: 0.2,
        clipCovLb: 0.2,
        klCovRatio: 0.2,
        ppoKlCoef: 0.5,
        tauPos: 1.5,
        seed: seed,
      };
      cases.push({ inputs, counts: counts(inputs), config });
    }
    const weighted = randomInputs(seed++, [6, 10, 4]);
    const rand = random(seed);
    weighted.rolloutIsWeights = Float32Array.from(weighted.mask, () => 0.5 + rand());
    cases.push({
      inputs: weighted,
      counts: counts(weighted),
      config: { lossMode, aggMode: "seq-mean-token-mean", kl: { type: "k3+", coeff: 0.2 } },
    });
  }
  const { worstGrad, worstLoss, results } = compareWithReference(cases, "modes");
  console.log(
    `${cases.length} cases over ${NEW_MODES.length} modes; max |loss - ref| = ${worstLoss.toExponential(2)}, max |grad - ref| = ${worstGrad.toExponential(2)}`,
  );
  // Each clipping mode clipped something, so the comparison covered both branches.
  for (const mode of ["gspo", "clip_cov", "geo_mean", "cispo"]) {
    const clipped = results.filter((_, i) => cases[i]?.config.lossMode === mode);
    assert.ok(
      clipped.some((r) => (r.metrics.pgClipfrac ?? 0) > 0),
      `${mode}: no case clipped a token`,
    );
  }
});

test("KL aliases and straight-through variants: kl = k1, mse = k2, k3+ has k3's value and k2's gradient", () => {
  const inputs = randomInputs(77, [8, 6]);
  const c = counts(inputs);
  const run = (type: NonNullable<PolicyLossConfig["kl"]>["type"]) =>
    policyLoss(inputs, c, { kl: { type, coeff: 1 }, lossMode: "gpg" });
  const cases = (["kl", "mse", "k1+", "k3+", "low_var_kl+", "abs+", "mse+"] as const).map((type) => ({
    inputs,
    counts: c,
    config: { kl: { type, coeff: 1 }, lossMode: "gpg" as const },
  }));
  compareWithReference(cases, "kl");
  closeArrays(run("kl").gradLogprobs, run("k1").gradLogprobs, "kl vs k1", 0);
  closeArrays(run("mse").gradLogprobs, run("k2").gradLogprobs, "mse vs k2", 0);
  const k3 = run("k3");
  const k3plus = run("k3+");
  close(k3plus.metrics.klLoss, k3.metrics.klLoss, "k3+ value", 0, 0);
  const k2 = run("k2");
  closeArrays(k3plus.gradLogprobs, k2.gradLogprobs, "k3+ gradient = k2's", 1e-7);
  assert.ok(
    k3.gradLogprobs.some((g, i) => Math.abs(g - (k2.gradLogprobs[i] ?? 0)) > 1e-4),
    "k3's own gradient differs from k2's",
  );
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
  close(grpo.metrics.pgClipfrac ?? Number.NaN, 3 / 5, "GRPO clipfrac");
  close(grpo.metrics.pgClipfracLower ?? Number.NaN, 1 / 5, "GRPO clipfrac lower");
  close(grpo.metrics.ppoKl ?? Number.NaN, -ratios.reduce((s, r) => s + Math.log(r), 0) / 5, "ppo_kl", 1e-6);
  // Only the unclipped token moves: d(-A·ratio)/d logp = -A·ratio.
  closeArrays(grpo.gradLogprobs, [0, 0, 0, -(ratio[3] ?? 0) / 5, 0], "GRPO grad");
  const dapo = policyLoss(inputs, { tokens: 5, sequences: 1 }, { clipRatioHigh: 0.28 });
  close(dapo.loss, (-1.28 + 0.8 + 3 - (ratio[3] ?? 0) - (ratio[4] ?? 0)) / 5, "DAPO loss", 1e-6);
  close(dapo.metrics.pgClipfrac ?? Number.NaN, 2 / 5, "DAPO clipfrac");
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
          metricSums[key] += r.metrics[key] ?? Number.NaN;
      }
      close(summed, one.loss, `${aggMode}: summed micro-batch losses`);
      for (const key of Object.keys(metricSums) as (keyof typeof metricSums)[]) {
        close(metricSums[key], one.metrics[key] ?? Number.NaN, `${aggMode}: summed ${key}`);
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
        `${aggMode}: loss ${one.loss.toFixed(5)} clipfrac ${(one.metrics.pgClipfrac ?? Number.NaN).toFixed(3)}; max |grad 1 - grad 4| = ${worst.toExponential(2)}` +
          ` (|grad| ${Math.sqrt(norm).toExponential(2)}), max |param 1 - param 4| after AdamW = ${worstParam.toExponential(2)}`,
      );
    } finally {
      whole.dispose();
      split.dispose();
    }
  }
});

test("hand-worked newer modes: gspo's one ratio per sequence, cispo's detached clipped weight, gpg's plain gradient, sapo's gate", () => {
  const old = Float32Array.from([-1, -1]);
  const counts1 = { tokens: 2, sequences: 1 };
  const base = { oldLogprobs: old, mask: Float32Array.from([1, 1]), cuSeqlens: Int32Array.from([0, 2]) };
  // gspo: token log ratios 0.2 and −0.4, the sequence's mean −0.1, so both tokens see e^−0.1 (inside the clip).
  const gspo = policyLoss(
    { ...base, logprobs: Float32Array.from([-0.8, -1.4]), advantages: Float32Array.from([1, 1]) },
    counts1,
    { lossMode: "gspo" },
  );
  const r = Math.exp(-0.1);
  close(gspo.loss, -r, "gspo loss", 1e-6);
  closeArrays(gspo.gradLogprobs, [-r / 2, -r / 2], "gspo grad", 1e-6);
  // cispo: ratio e^0.5 ≈ 1.65 clipped to 1.2, as a constant weight: loss −1.2·A·logprob.
  const logprobs = Float32Array.from([-0.5, -1]);
  const cispo = policyLoss({ ...base, logprobs, advantages: Float32Array.from([1, 1]) }, counts1, {
    lossMode: "cispo",
  });
  close(cispo.loss, (-1.2 * -0.5 - 1 * -1) / 2, "cispo loss", 1e-6);
  closeArrays(cispo.gradLogprobs, [-1.2 / 2, -1 / 2], "cispo grad", 1e-6);
  close(cispo.metrics.pgClipfrac ?? Number.NaN, 1 / 2, "cispo clipfrac");
  assert.equal(cispo.metrics.pgClipfracLower, undefined, "cispo does not measure a lower clip fraction");
  // gpg: −A·logprob, whatever the ratio; it measures no clip fraction or ppo_kl.
  const gpg = policyLoss({ ...base, logprobs, advantages: Float32Array.from([2, -1]) }, counts1, {
    lossMode: "gpg",
  });
  close(gpg.loss, (2 * 0.5 - 1 * 1) / 2, "gpg loss", 1e-6);
  closeArrays(gpg.gradLogprobs, [-1, 0.5], "gpg grad", 1e-6);
  assert.deepEqual(Object.keys(gpg.metrics).sort(), ["entropy", "klLoss", "pgLoss"]);
  // sapo at ratio 1: gate σ(0)·4/τ = 2/τ, so the loss is −2A/τ with τ = tauPos for A > 0.
  const sapo = policyLoss({ ...base, logprobs: old, advantages: Float32Array.from([1, 1]) }, counts1, {
    lossMode: "sapo",
    tauPos: 2,
  });
  close(sapo.loss, -1, "sapo loss", 1e-6);
});
