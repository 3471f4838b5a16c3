// Planned against measured memory (issue: the planner's numbers are the engine's): one update's
// activation peak — the allocator's peak during the forwards and backwards above what the rank held
// when the update began, less the gradients it made (as the worker reports
// perf/memory/activations_peak_bytes) — beside the plan's update activations + logprob chunk; and a
// generation's KV cache (model.memory().kvCache) beside the plan's cache for that batch. On CUDA a
// Qwen3-0.6B shape in bf16 (flash attention, the planner's model); on CPU a small Qwen3 in fp32,
// whose attention and logprob paths keep more (printed, not a target).
import { engineInfo, Model } from "../src/index.js";
import { plan } from "../src/plan/index.js";
import { writeTinyDense } from "../tests/helpers/tiny-models.js";
import { type BenchResult, benchModel } from "./common.js";

export async function benchMemory(): Promise<BenchResult[]> {
  const cuda = engineInfo().cudaAvailable;
  const shape = cuda
    ? {
        dir: benchModel("qwen3-0.6b"),
        dtype: "bfloat16" as const,
        device: "cuda:0",
        sequences: 4,
        length: 2048,
        vocab: 151_936,
      }
    : {
        dir: "/tmp/tiller-bench/memory-qwen3",
        dtype: "float32" as const,
        device: "cpu",
        sequences: 4,
        length: 256,
        vocab: 1024,
      };
  if (!cuda)
    await writeTinyDense(shape.dir, {
      family: "qwen3",
      heads: 4,
      kvHeads: 2,
      layers: 4,
      hidden: 128,
      vocab: shape.vocab,
      seed: 1,
    });
  const model = await Model.load(shape.dir, { device: shape.device, dtype: shape.dtype });
  try {
    model.initOptimizer({ lr: 1e-5 });
    const { sequences, length, vocab } = shape;
    const n = sequences * length;
    const tokens = Int32Array.from({ length: n }, (_, i) => (i * 7919) % vocab);
    const cuSeqlens = Int32Array.from({ length: sequences + 1 }, (_, i) => i * length);
    const rows = n - sequences;
    const perToken = {
      oldLogprobs: new Float32Array(rows).fill(-3),
      advantages: new Float32Array(rows).fill(0.5),
      mask: new Float32Array(rows).fill(1),
    };
    // One update's activation peak at a logprob chunk of `chunk` rows; the second update is the one
    // measured (the first also allocates the optimizer state).
    const measure = async (chunk: number) => {
      let measured = 0;
      for (let k = 0; k < 2; k++) {
        const before = model.memory();
        await model.policySteps([{ tokens, cuSeqlens, perToken }], { tokens: rows, sequences }, {}, 1, chunk);
        const after = model.memory();
        measured =
          (after.device?.peak ?? 0) - (before.device?.allocated ?? 0) - (after.gradients - before.gradients);
        await model.optimizerStep();
      }
      return measured;
    };
    // The engine's default chunk on CUDA; on CPU a quarter of the rows, so twice it still fits.
    const chunk = cuda ? 1024 : 256;
    const measured = await measure(chunk);
    // Twice the chunk: the difference is what `chunk` more rows of the logprob pass keep.
    const perChunkRow = ((await measure(2 * chunk)) - measured) / chunk;
    // Generation: every prompt of the plan's length, every response to the limit.
    const promptTokens = 64;
    const responseTokens = 32;
    const prompts = Array.from({ length: 16 }, (_, p) =>
      Int32Array.from({ length: promptTokens }, (_, i) => (p * 131 + i * 17) % vocab),
    );
    await model.generate(prompts, {
      maxNewTokens: responseTokens,
      temperature: 1,
      seed: 1,
      stopTokenIds: [],
    });
    const kv = model.memory().kvCache;
    const planFor = (batch: Record<string, number>) =>
      plan({
        model: shape.dir,
        gpu: "H200-141GB",
        gpus: 1,
        train: {},
        rollout: {},
        dtype: shape.dtype,
        logprobChunkTokens: chunk,
        batch: { samplesPerPrompt: 1, ...batch } as never,
      });
    // The update's micro-batch: the sequences above, each its full length.
    const trained = planFor({
      promptsPerStep: sequences,
      promptTokens: length / 2,
      responseTokens: length / 2,
      tokensPerMicroBatch: n,
    });
    const rolled = planFor({
      promptsPerStep: prompts.length,
      promptTokens,
      responseTokens,
      tokensPerMicroBatch: n,
    });
    const update = trained.stages[0]?.phases.update;
    const planned = (update?.activations ?? 0) + (update?.logprobChunk ?? 0);
    const chunkMeasured = perChunkRow * chunk;
    const layersMeasured = measured - chunkMeasured;
    const where = `${cuda ? "CUDA bf16, Qwen3-0.6B shape" : "CPU fp32, Qwen3 hidden 128 x 4 layers, vocab 1024"}, ${sequences} x ${length} tokens`;
    return [
      {
        name: "memory/update activation peak",
        value: measured / 2 ** 20,
        unit: "MiB",
        baseline: planned / 2 ** 20,
        baselineName: "plan (activations + logprob chunk)",
        ratio: measured / planned,
        detail: `${where}; planned activations ${((update?.activations ?? 0) / 2 ** 20).toFixed(1)} MiB + logprob chunk ${((update?.logprobChunk ?? 0) / 2 ** 20).toFixed(1)} MiB`,
      },
      {
        name: "memory/update logprob chunk",
        value: chunkMeasured / 2 ** 20,
        unit: "MiB",
        baseline: (update?.logprobChunk ?? 0) / 2 ** 20,
        baselineName: "plan",
        ratio: chunkMeasured / (update?.logprobChunk ?? 1),
        detail: `${chunk} rows x ${vocab} vocabulary: ${(perChunkRow / vocab).toFixed(1)} B per logit measured (from the peak's growth at ${2 * chunk} rows)`,
      },
      {
        name: "memory/update layer activations",
        value: layersMeasured / 2 ** 20,
        unit: "MiB",
        baseline: (update?.activations ?? 0) / 2 ** 20,
        baselineName: "plan",
        ratio: layersMeasured / (update?.activations ?? 1),
        detail: `the activation peak less the logprob chunk; ${(layersMeasured / n).toFixed(0)} B per token measured`,
      },
      {
        name: "memory/rollout KV cache",
        value: kv / 2 ** 20,
        unit: "MiB",
        baseline: rolled.rollout.kvCacheForBatchBytes / 2 ** 20,
        baselineName: "plan (KV cache of the batch)",
        ratio: kv / rolled.rollout.kvCacheForBatchBytes,
        detail: `${prompts.length} prompts x ${promptTokens} + ${responseTokens} tokens`,
      },
    ];
  } finally {
    model.dispose();
  }
}
