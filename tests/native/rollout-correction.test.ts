// Rollout correction (src/rl/rollout-correction.ts) against a torch transcription of verl 0.9.1's
// rollout_corr_helper.py (tests/python/rollout_correction_reference.py): IS weights per token and
// per sequence, truncated or IcePop, batch-normalised; every rejection option alone and combined;
// every rollout_corr/ metric. Plus hand-worked weights and the config's refusals.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  type RolloutCorrectionConfig,
  rejectionOptions,
  resolveRolloutCorrection,
  rolloutCorrection,
} from "../../src/rl/index.js";
import { runPython, tempDir } from "../helpers/python.js";

const dir = tempDir("rollout-corr");
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

/** 7 responses of 1-12 tokens; response 3 is wholly masked; a few tokens differ by far more than the rest. */
function batch(seed: number) {
  const rand = random(seed);
  const old: number[][] = [];
  const rollout: number[][] = [];
  const mask: number[][] = [];
  for (let i = 0; i < 7; i++) {
    const n = 1 + Math.floor(rand() * 12);
    const o = Array.from({ length: n }, () => -3 * rand());
    old.push(o);
    rollout.push(o.map((v) => v + (rand() - 0.5) * (rand() < 0.1 ? 6 : 0.6)));
    mask.push(Array.from({ length: n }, (_, t) => (i === 3 || (t === 0 && n > 3) ? 0 : 1)));
  }
  return { old, rollout, mask };
}

test("IS weights, rejection masks and every rollout_corr/ metric equal verl's (1e-9), for each option and combination", () => {
  const configs: RolloutCorrectionConfig[] = [
    { rolloutIs: "token" },
    { rolloutIs: "token", rolloutIsThreshold: 1.5, rolloutIsBatchNormalize: true },
    { rolloutIs: "sequence", rolloutIsThreshold: "2" },
    { rolloutIs: "sequence", rolloutIsBatchNormalize: true },
    { rolloutIs: "token", rolloutIsThreshold: "0.8_1.25" },
    { rolloutIs: "sequence", rolloutIsThreshold: "0.5_2" },
    ...rejectionOptions.map((o) => ({
      rolloutRs: o,
      rolloutRsThreshold: o.endsWith("k1")
        ? o.startsWith("token")
          ? 1.5
          : "0.5_3"
        : o.startsWith("seq_sum")
          ? 0.3
          : 0.05,
    })),
    {
      rolloutIs: "token",
      rolloutRs: "token_k1,seq_mean_k3,seq_max_k2",
      rolloutRsThreshold: "0.7_1.4,0.02,0.5",
    },
  ];
  const cases = configs.map((config, k) => ({
    ...batch(40 + k),
    config,
    resolved: resolveRolloutCorrection(config),
  }));
  const file = join(dir.path, "cases.json");
  writeFileSync(
    file,
    JSON.stringify(
      cases.map((c) => ({
        old: c.old,
        rollout: c.rollout,
        mask: c.mask,
        rolloutIs: c.resolved.rolloutIs,
        isUpper: c.resolved.isUpper,
        isLower: c.resolved.isLower,
        batchNormalize: c.resolved.rolloutIsBatchNormalize,
        rejection: c.resolved.rejection,
      })),
    ),
  );
  const expected = JSON.parse(runPython("rollout_correction_reference.py", [file])) as {
    weights?: number[][];
    mask: number[][];
    metrics: Record<string, number>;
  }[];
  let worst = 0;
  let rejected = 0;
  let truncated = 0;
  cases.forEach((c, k) => {
    const what = JSON.stringify(c.config);
    const got = rolloutCorrection(c.old, c.rollout, c.mask, c.resolved);
    const ref = expected[k] as (typeof expected)[number];
    const near = (a: number, b: number, name: string) => {
      const d = Math.abs(a - b);
      if (Number.isFinite(d)) worst = Math.max(worst, d);
      assert.ok(a === b || d <= 1e-9 + 1e-9 * Math.abs(b), `${what} ${name}: ${a} vs ${b}`);
    };
    assert.deepEqual(
      Object.keys(got.metrics).sort(),
      Object.keys(ref.metrics).sort(),
      `${what}: metric names`,
    );
    for (const [name, v] of Object.entries(ref.metrics)) near(got.metrics[name] as number, v, name);
    assert.equal(got.weights === undefined, ref.weights === undefined, `${what}: weights`);
    got.weights?.forEach((row, i) => {
      row.forEach((w, t) => {
        near(w, ref.weights?.[i]?.[t] as number, `weights[${i}][${t}]`);
      });
    });
    got.mask.forEach((row, i) => {
      row.forEach((m, t) => {
        near(m, ref.mask[i]?.[t] as number, `mask[${i}][${t}]`);
      });
    });
    rejected += got.metrics["rollout_corr/rollout_rs_masked_fraction"] ?? 0;
    truncated += got.metrics["rollout_corr/rollout_is_ratio_fraction_high"] ?? 0;
  });
  console.log(`${cases.length} configurations; max |ours − verl| = ${worst.toExponential(2)}`);
  // The batches exercise truncation and rejection, not only the pass-through paths.
  assert.ok(rejected > 0 && truncated > 0, `rejected ${rejected}, truncated ${truncated}`);
});

test("token TIS by hand: w = min(π_old/π_rollout, cap), 0 outside the mask; sequence TIS: one weight per response", () => {
  const old = [[Math.log(0.5), Math.log(0.9)], [Math.log(0.2)]];
  const rollout = [[Math.log(0.1), Math.log(0.9)], [Math.log(0.4)]];
  const mask = [[1, 1], [0]];
  const token = rolloutCorrection(
    old,
    rollout,
    mask,
    resolveRolloutCorrection({ rolloutIs: "token", rolloutIsThreshold: 2 }),
  );
  const w = token.weights ?? [];
  assert.ok(Math.abs((w[0]?.[0] ?? 0) - 2) < 1e-12, "5 truncated to the cap 2");
  assert.ok(Math.abs((w[0]?.[1] ?? 0) - 1) < 1e-12, "equal probabilities: 1");
  assert.equal(w[1]?.[0], 0, "masked out: 0");
  const seq = rolloutCorrection(
    old,
    rollout,
    mask,
    resolveRolloutCorrection({ rolloutIs: "sequence", rolloutIsThreshold: 10 }),
  );
  assert.ok(
    Math.abs((seq.weights?.[0]?.[0] ?? 0) - 5) < 1e-12 && Math.abs((seq.weights?.[0]?.[1] ?? 0) - 5) < 1e-12,
  );
});

test("rollout correction config: bad values are refused naming the field and what is allowed", () => {
  assert.throws(
    () => resolveRolloutCorrection({ rolloutIs: "batch" as "token" }),
    /rolloutIs: "batch"; allowed: "token", "sequence"/,
  );
  assert.throws(
    () => resolveRolloutCorrection({ rolloutIsThreshold: "2_1" }),
    /rolloutIsThreshold.*lower bound above upper/,
  );
  assert.throws(
    () => resolveRolloutCorrection({ rolloutRs: "token_k4", rolloutRsThreshold: 1 }),
    /rolloutRs: "token_k4"; allowed: token_k1/,
  );
  assert.throws(() => resolveRolloutCorrection({ rolloutRs: "token_k2" }), /rolloutRsThreshold: required/);
  assert.throws(
    () => resolveRolloutCorrection({ rolloutRs: "token_k2,seq_sum_k3", rolloutRsThreshold: "1,2,3" }),
    /3 thresholds for 2 options/,
  );
  assert.throws(
    () => resolveRolloutCorrection({ rolloutRs: "token_k3", rolloutRsThreshold: "0.1_2" }),
    /single upper bound/,
  );
  assert.throws(() => resolveRolloutCorrection({ bypassMode: true, rolloutIs: "token" }), /bypassMode/);
});
