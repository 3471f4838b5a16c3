// Rollout throughput: a Qwen3-0.6B-shaped model (random weights, bf16) generating 256 new tokens
// after 128-token prompts, at batch 64 and 256, against HF transformers with its static cache on
// the same GPU in the same run. Needs CUDA.
import { join } from "node:path";
import { engineInfo, Model } from "../src/index.js";
import { type BenchResult, benchModel, pythonBaseline } from "./common.js";

const promptLength = 128;
const newTokens = 256;

function prompts(count: number, vocab: number): Int32Array[] {
  let seed = 12345;
  const next = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % vocab;
  };
  return Array.from({ length: count }, () => Int32Array.from({ length: promptLength }, next));
}

export async function benchGenerate(): Promise<BenchResult[]> {
  if (!engineInfo().cudaAvailable) throw new Error("skipped: needs a CUDA device");
  const dir = benchModel("qwen3-0.6b");
  const model = await Model.load(dir, { device: "cuda:0", dtype: "bfloat16" });
  const results: BenchResult[] = [];
  try {
    for (const batch of [64, 256]) {
      const input = prompts(batch, 151936);
      await model.generate(input, { maxNewTokens: newTokens }); // warm-up: cache and CUDA graphs
      const start = performance.now();
      const out = await model.generate(input, { maxNewTokens: newTokens });
      const seconds = (performance.now() - start) / 1000;
      const generated = out.reduce((n, g) => n + g.tokens.length, 0);
      // Prefill plus one sampled token alone, so the decode cost per step can be told apart.
      const prefillStart = performance.now();
      await model.generate(input, { maxNewTokens: 1 });
      const prefillSeconds = (performance.now() - prefillStart) / 1000;
      const decodeMs = ((seconds - prefillSeconds) * 1000) / (newTokens - 1);
      // A Kineto trace of a short generation (prefill + 31 decode steps) for finding where time goes.
      const traceDir = process.env.TILLER_PROFILE_DIR;
      if (traceDir) {
        model.profileNext(join(traceDir, `generate-b${batch}.trace.json`));
        await model.generate(input, { maxNewTokens: 32 });
      }
      if (generated !== batch * newTokens)
        throw new Error(`expected ${batch * newTokens} tokens, got ${generated}`);
      const ours = generated / seconds;
      const hf = pythonBaseline<{ tokens_per_second: number }>("hf_generate.py", [
        dir,
        batch,
        promptLength,
        newTokens,
        "static",
      ]);
      results.push({
        name: `generate qwen3-0.6b bf16 batch ${batch}, ${promptLength}→${newTokens}`,
        value: ours,
        unit: "tok/s",
        baseline: hf.tokens_per_second,
        baselineName: "HF transformers static cache",
        ratio: ours / hf.tokens_per_second,
        detail: `${generated} tokens in ${seconds.toFixed(2)} s; prefill ${(prefillSeconds * 1000).toFixed(0)} ms, decode ${decodeMs.toFixed(2)} ms/step`,
      });
    }
  } finally {
    model.dispose();
  }
  return results;
}
