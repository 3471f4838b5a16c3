// MoE on CUDA (bf16): the grouped-GEMM experts against the per-expert loop on the same inputs, and
// the RL loop on a tiny Qwen3-MoE with routing replay off and on (rollout-vs-training difference).
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ExperimentRun } from "../../src/controller/experiment.js";
import { Model } from "../../src/index.js";
import { resolveConfig } from "../../src/rl/config.js";
import { prepareNextDigit } from "../../src/rl/tasks/next-digit.js";
import { localRank } from "../../src/worker/local.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("gpu-moe");
let base: Awaited<ReturnType<typeof prepareNextDigit>>;
before(async () => {
  base = await prepareNextDigit(dir.path, {}, { seed: 4, hiddenSize: 128, moe: { experts: 16, topK: 4 } });
});
after(() => {
  delete process.env.TILLER_MOE_EXPERTS;
  dir.cleanup();
});

test("grouped GEMM experts match the per-expert loop within bf16 tolerance (logprobs and gradients)", async () => {
  const model = await Model.load(base.modelPath, { device: "cuda:0", dtype: "bfloat16" });
  try {
    const tokens = Int32Array.from({ length: 512 }, (_, i) => 2 + ((i * 31 + 7) % 12));
    const cu = Int32Array.from([0, 200, 512]);
    const weights = new Float32Array(510).fill(1 / 510);
    const run = async (mode: string) => {
      process.env.TILLER_MOE_EXPERTS = mode;
      const lp = await model.logprobs(tokens, cu);
      const g = await model.lossBackward(tokens, cu, weights);
      return { lp: lp.logprobs, g };
    };
    const loop = await run("loop");
    const grouped = await run("grouped");
    let lpDiff = 0;
    for (let i = 0; i < loop.lp.length; i++)
      lpDiff = Math.max(lpDiff, Math.abs((loop.lp[i] as number) - (grouped.lp[i] as number)));
    let gradRel = 0;
    for (const [i, t] of loop.g.gradients.entries()) {
      const u = grouped.g.gradients[i];
      assert.equal(u?.name, t.name);
      const toF = (x: typeof t) =>
        x.dtype === "bfloat16"
          ? Float32Array.from(
              x.data as Uint16Array,
              (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0] as number,
            )
          : (x.data as Float32Array);
      const a = toF(t);
      const b = toF(u as typeof t);
      let num = 0;
      let den = 0;
      for (let j = 0; j < a.length; j++) {
        num = Math.max(num, Math.abs((a[j] as number) - (b[j] as number)));
        den = Math.max(den, Math.abs(a[j] as number));
      }
      if (den > 0) gradRel = Math.max(gradRel, num / den);
    }
    console.log(
      `grouped vs loop (bf16): logprobs max |diff| ${lpDiff.toExponential(2)}, gradients max relative ${gradRel.toExponential(2)}`,
    );
    assert.ok(lpDiff < 5e-2, `logprobs ${lpDiff}`);
    assert.ok(gradRel < 5e-2, `gradients ${gradRel}`);
  } finally {
    delete process.env.TILLER_MOE_EXPERTS;
    model.dispose();
  }
});

test("RL on a tiny Qwen3-MoE in bf16: rollout-vs-training difference with routing replay off and on", {
  timeout: 300_000,
}, async () => {
  const diffs: Record<string, number> = {};
  for (const replay of ["off", "replay"] as const) {
    const local = localRank();
    const run = await ExperimentRun.create(
      resolveConfig({
        ...base.config,
        name: `gpu-moe-${replay}`,
        runDir: join(dir.path, `run-${replay}`),
        model: { path: base.modelPath, dtype: "bfloat16" },
        rollout: { samplesPerPrompt: 8, maxResponseTokens: 4, routingReplay: replay },
        algorithm: { recomputeOldLogprobs: true },
      }),
      local.call,
      { device: "cuda:0" },
    );
    try {
      const rows = await run.run(5);
      diffs[replay] = Math.max(...rows.map((r) => r["training/rollout_probs_diff_max"] as number));
      assert.ok(Number.isFinite(rows.at(-1)?.["router/load_imbalance/max"]));
    } finally {
      await run.close();
      local.dispose();
    }
  }
  console.log(
    `MoE bf16 rollout vs training probs, max |diff|: replay off ${diffs.off?.toExponential(2)}, replay on ${diffs.replay?.toExponential(2)}`,
  );
  // Without recording, generation runs in the CUDA slot decoder, bit-identical to training. With
  // recording it takes the generic decoder (the slot decoder does not record experts yet), whose
  // attention differs from the training forward's in the last bits of bf16: a probability near 1
  // then moves by up to one bf16 step there, 2^-8 (measured 1.4e-3 once updates replay routing).
  assert.equal(diffs.off, 0);
  assert.ok((diffs.replay as number) < 2 ** -8, `replay on: ${diffs.replay}`);
});
