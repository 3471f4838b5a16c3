// Rollout throughput: a Qwen3-0.6B-shaped model (random weights, bf16) generating 256 new tokens
// after 128-token prompts, at batch 64 and 256, against HF transformers with its static cache on
// the same GPU in the same run, and the decode steps against the HBM bandwidth limit: the bytes a
// step must read (the weights it multiplies by, once, and every running sequence's KV cache) over
// the device's copy bandwidth measured in the same run; and nano-vllm's benchmark shape (random
// prompt and output lengths) against the limit of its own decode steps. Needs CUDA.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { engineInfo, Model } from "../src/index.js";
import { plan } from "../src/plan/index.js";
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
  const { weightBytes, kvBytesPerToken, bytesPerSecond } = decodeLimitInputs(dir);
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
      // The same at temperature 1, as an RL rollout samples (the sampler's cost on top of greedy's).
      const sampledStart = performance.now();
      const sampled = await model.generate(input, { maxNewTokens: newTokens, temperature: 1, seed: 3 });
      const sampledSeconds = (performance.now() - sampledStart) / 1000;
      const sampledDecodeMs = ((sampledSeconds - prefillSeconds) * 1000) / (newTokens - 1);
      if (sampled.reduce((n, g) => n + g.tokens.length, 0) !== batch * newTokens)
        throw new Error("a sampled generation stopped early");
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
      // The mean decode step sees the prompt and half the new tokens.
      const kvBytes = batch * (promptLength + newTokens / 2) * kvBytesPerToken;
      const limitMs = ((weightBytes + kvBytes) / bytesPerSecond) * 1000;
      results.push({
        name: `decode qwen3-0.6b bf16 batch ${batch}: against the bandwidth limit`,
        value: (batch * 1000) / decodeMs,
        unit: "tok/s",
        baseline: (batch * 1000) / limitMs,
        baselineName: "HBM limit (bytes read per step ÷ copy bandwidth)",
        ratio: limitMs / decodeMs,
        detail: `${decodeMs.toFixed(2)} ms per step against ${limitMs.toFixed(2)} ms: ${(weightBytes / 2 ** 20).toFixed(0)} MiB of weights + ${(kvBytes / 2 ** 20).toFixed(0)} MiB of KV cache at ${(bytesPerSecond / 1e12).toFixed(2)} TB/s`,
      });
      results.push({
        name: `decode qwen3-0.6b bf16 batch ${batch}, temperature 1: against the bandwidth limit`,
        value: (batch * 1000) / sampledDecodeMs,
        unit: "tok/s",
        baseline: (batch * 1000) / limitMs,
        baselineName: "HBM limit (bytes read per step ÷ copy bandwidth)",
        ratio: limitMs / sampledDecodeMs,
        detail: `${sampledDecodeMs.toFixed(2)} ms per step (greedy ${decodeMs.toFixed(2)}) against ${limitMs.toFixed(2)} ms`,
      });
    }
    results.push(await nanoVllmShape(model, weightBytes, kvBytesPerToken, bytesPerSecond));
  } finally {
    model.dispose();
  }
  return results;
}

// What a decode step reads at the least: the layers' and the lm-head's weights (the embedding is
// only gathered from, unless it is the lm-head) and the KV cache of every sequence's context; and
// the device's copy bandwidth, measured now.
function decodeLimitInputs(dir: string): {
  weightBytes: number;
  kvBytesPerToken: number;
  bytesPerSecond: number;
} {
  const planned = plan({
    model: dir,
    gpu: "H200-141GB",
    gpus: 1,
    dtype: "bfloat16",
    batch: {
      promptsPerStep: 256,
      samplesPerPrompt: 1,
      promptTokens: promptLength,
      responseTokens: newTokens,
    },
  });
  const stage = planned.stages[0];
  if (!stage) throw new Error("the plan has no stage");
  const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as {
    tie_word_embeddings?: boolean;
  };
  const weights = stage.static.parameters;
  const weightBytes =
    weights.dense + weights.expert + (config.tie_word_embeddings ? weights.embedding : weights.embedding / 2);
  const copy = pythonBaseline<{ bytes_per_second: number }>("copy_bandwidth.py", ["cuda:0"]);
  return {
    weightBytes,
    kvBytesPerToken: planned.rollout.kvBytesPerToken,
    bytesPerSecond: copy.bytes_per_second,
  };
}

/** `npm run bench generate-nano`: nano-vllm's shape alone (below). */
export async function benchGenerateNano(): Promise<BenchResult> {
  if (!engineInfo().cudaAvailable) throw new Error("skipped: needs a CUDA device");
  const dir = benchModel("qwen3-0.6b");
  const limits = decodeLimitInputs(dir);
  const model = await Model.load(dir, { device: "cuda:0", dtype: "bfloat16" });
  try {
    return await nanoVllmShape(model, limits.weightBytes, limits.kvBytesPerToken, limits.bytesPerSecond);
  } finally {
    model.dispose();
  }
}

// nano-vllm's benchmark shape: 256 sequences, prompt and output lengths drawn uniformly from
// 100–1024, no stop tokens (its ignore_eos). Output tokens per second over the whole call, and the
// decode part against the HBM limit of exactly these steps: each step reads the weights once and
// the KV cache of the sequences still running, at their context length then.
async function nanoVllmShape(
  model: Model,
  weightBytes: number,
  kvBytesPerToken: number,
  bytesPerSecond: number,
): Promise<BenchResult> {
  const count = 256;
  let seed = 0x5eed;
  const next = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const inputs = Array.from({ length: count }, () => 100 + next(925));
  const outputs = Array.from({ length: count }, () => 100 + next(925));
  const input = inputs.map((n) => Int32Array.from({ length: n }, () => next(151936)));
  await model.generate(input, { maxNewTokens: outputs }); // warm-up: the larger cache and its graphs
  const start = performance.now();
  const out = await model.generate(input, { maxNewTokens: outputs });
  const seconds = (performance.now() - start) / 1000;
  const generated = out.reduce((n, g) => n + g.tokens.length, 0);
  const expected = outputs.reduce((a, b) => a + b, 0);
  if (generated !== expected)
    throw new Error(`nano-vllm shape: expected ${expected} tokens, got ${generated}`);
  const prefillStart = performance.now();
  await model.generate(input, { maxNewTokens: 1 });
  const prefillSeconds = (performance.now() - prefillStart) / 1000;
  // Decode step s (1 .. longest output − 1) feeds token s of every sequence with more to make.
  let limitSeconds = 0;
  for (let step = 1; step < Math.max(...outputs); step++) {
    let kv = 0;
    for (let i = 0; i < count; i++)
      if ((outputs[i] ?? 0) > step) kv += ((inputs[i] ?? 0) + step) * kvBytesPerToken;
    limitSeconds += (weightBytes + kv) / bytesPerSecond;
  }
  const decodeSeconds = seconds - prefillSeconds;
  return {
    name: "generate qwen3-0.6b bf16, nano-vllm's shape: 256 sequences, prompts and outputs 100–1024 tokens, no stop",
    value: generated / seconds,
    unit: "tok/s",
    baseline: generated / (limitSeconds + prefillSeconds),
    baselineName: "HBM limit of its decode steps (+ the measured prefill)",
    ratio: limitSeconds / decodeSeconds,
    detail: `${generated} tokens in ${seconds.toFixed(2)} s (prefill ${(prefillSeconds * 1000).toFixed(0)} ms); decode ${decodeSeconds.toFixed(2)} s against ${limitSeconds.toFixed(2)} s at the HBM limit (ratio of the decode part)`,
  };
}
