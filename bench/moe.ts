// MoE experts as one grouped GEMM (at::_grouped_mm) against the per-expert loop, on the same model
// in the same run: a Qwen3-MoE-shaped stack (4 layers, hidden 1024, 64 experts, top-8, bf16),
// one forward + backward over 8 × 2048 tokens. Needs CUDA.
import { join } from "node:path";
import { engineInfo, Model } from "../src/index.js";
import { writeTinyModel } from "../src/rl/tasks/next-digit.js";
import { tempDir } from "../tests/helpers/python.js";
import type { BenchResult } from "./common.js";

const sequences = 8;
const sequenceLength = 2048;
const steps = 5;

export async function benchMoe(): Promise<BenchResult[]> {
  if (!engineInfo().cudaAvailable) throw new Error("skipped: needs a CUDA device");
  const dir = tempDir("bench-moe");
  try {
    const path = join(dir.path, "model");
    await writeTinyModel(path, { hiddenSize: 1024, layers: 4, moe: { experts: 64, topK: 8 } });
    const model = await Model.load(path, { device: "cuda:0", dtype: "bfloat16" });
    try {
      const total = sequences * sequenceLength;
      const tokens = Int32Array.from({ length: total }, (_, i) => 2 + ((i * 7919 + 13) % 12));
      const cu = Int32Array.from({ length: sequences + 1 }, (_, i) => i * sequenceLength);
      const mask = new Float32Array(total - sequences).fill(1);
      model.initOptimizer({ lr: 1e-5 });
      const time = async (mode: "grouped" | "loop") => {
        process.env.TILLER_MOE_EXPERTS = mode;
        await model.trainStep(tokens, cu, mask, mask.length); // warm-up
        await model.optimizerStep();
        const t0 = performance.now();
        for (let i = 0; i < steps; i++) {
          await model.trainStep(tokens, cu, mask, mask.length);
          await model.optimizerStep();
        }
        return (performance.now() - t0) / steps;
      };
      const loopMs = await time("loop");
      const groupedMs = await time("grouped");
      delete process.env.TILLER_MOE_EXPERTS;
      return [
        {
          name: "MoE train step (4 layers, 64 experts, top-8, bf16, 8×2048 tokens), grouped GEMM",
          value: total / (groupedMs / 1000),
          unit: "tok/s",
          baseline: total / (loopMs / 1000),
          baselineName: "per-expert loop",
          ratio: loopMs / groupedMs,
          detail: `${groupedMs.toFixed(1)} ms/step grouped vs ${loopMs.toFixed(1)} ms/step loop`,
        },
      ];
    } finally {
      model.dispose();
    }
  } finally {
    dir.cleanup();
  }
}
