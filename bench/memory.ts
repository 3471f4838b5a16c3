// Planned against measured memory (issue: the planner's numbers are the engine's): one update's
// activation peak — the allocator's peak during the forwards and backwards above what the rank held
// when the update began, less the gradients it made (as the worker reports
// perf/memory/activations_peak_bytes) — beside the plan's update activations + logprob chunk; and a
// generation's KV cache (model.memory().kvCache) beside the plan's cache for that batch. On CUDA a
// Qwen3-0.6B shape in bf16 (flash attention, the planner's CUDA model); on CPU a small Qwen3 in
// fp32 against the planner's CPU model (`device: "cpu"`: composite norms, the logits kept whole).
import { engineInfo, Model } from "../src/index.js";
import { plan } from "../src/plan/index.js";
import { writeTinyDense } from "../tests/helpers/tiny-models.js";
import { type BenchResult, benchModel } from "./common.js";

/**
 * One update's activation peak on `model` at a logprob chunk of `chunk` rows, the update running
 * `micro` `times` times, and the gradient bytes it made (subtracted, as the worker does); the
 * second update is the one measured (the first also allocates the optimizer state).
 */
async function updatePeak(
  model: Model,
  micro: { tokens: Int32Array; cuSeqlens: Int32Array; rows: number; sequences: number },
  chunk: number,
  times: number,
): Promise<{ measured: number; gradients: number }> {
  const perToken = {
    oldLogprobs: new Float32Array(micro.rows).fill(-3),
    advantages: new Float32Array(micro.rows).fill(0.5),
    mask: new Float32Array(micro.rows).fill(1),
  };
  let measured = 0;
  let gradients = 0;
  for (let k = 0; k < 2; k++) {
    const before = model.memory();
    await model.policySteps(
      Array.from({ length: times }, () => ({ tokens: micro.tokens, cuSeqlens: micro.cuSeqlens, perToken })),
      { tokens: times * micro.rows, sequences: times * micro.sequences },
      {},
      1,
      chunk,
    );
    const after = model.memory();
    gradients = after.gradients - before.gradients;
    measured = (after.device?.peak ?? 0) - (before.device?.allocated ?? 0) - gradients;
    await model.optimizerStep();
  }
  return { measured, gradients };
}

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
        layers: 28,
      }
    : {
        dir: "/tmp/tiller-bench/memory-qwen3",
        dtype: "float32" as const,
        device: "cpu",
        sequences: 4,
        length: 256,
        vocab: 1024,
        layers: 4,
      };
  // On CPU the logits are kept whole whatever the chunk, so the peak is split by depth instead: a
  // twin with half the layers, the difference being half the layers' activations.
  const tinyShape = (layers: number) =>
    ({ family: "qwen3", heads: 4, kvHeads: 2, layers, hidden: 128, vocab: shape.vocab, seed: 1 }) as const;
  const twinDir = `${shape.dir}-${shape.layers / 2}-layers`;
  if (!cuda) {
    await writeTinyDense(shape.dir, tinyShape(shape.layers));
    await writeTinyDense(twinDir, tinyShape(shape.layers / 2));
  }
  const { sequences, length, vocab } = shape;
  const n = sequences * length;
  const micro = {
    tokens: Int32Array.from({ length: n }, (_, i) => (i * 7919) % vocab),
    cuSeqlens: Int32Array.from({ length: sequences + 1 }, (_, i) => i * length),
    rows: n - sequences,
    sequences,
  };
  // The engine's default chunk on CUDA; on CPU a quarter of the rows.
  const chunk = cuda ? 1024 : 256;
  // On CPU the update runs the micro-batch twice: the peak is the second's, whose gradients exist
  // already (a first micro-batch's peak comes before its gradients, which the worker's figure
  // subtracts all the same). CUDA: one micro-batch, as the H200 rows were measured.
  const times = cuda ? 1 : 2;
  const load = async (dir: string) => {
    const m = await Model.load(dir, { device: shape.device, dtype: shape.dtype });
    m.initOptimizer({ lr: 1e-5 });
    return m;
  };
  let twinMeasured = 0;
  if (!cuda) {
    const twin = await load(twinDir);
    try {
      twinMeasured = (await updatePeak(twin, micro, chunk, times)).measured;
    } finally {
      twin.dispose();
    }
  }
  const model = await load(shape.dir);
  try {
    const { measured, gradients } = await updatePeak(model, micro, chunk, times);
    // CUDA: twice the chunk, the difference being what `chunk` more rows of the logprob pass keep.
    const perChunkRow = cuda
      ? ((await updatePeak(model, micro, 2 * chunk, times)).measured - measured) / chunk
      : 0;
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
    const planFor = (batch: Record<string, number>, dir = shape.dir) =>
      plan({
        model: dir,
        gpu: "H200-141GB",
        gpus: 1,
        train: {},
        rollout: {},
        dtype: shape.dtype,
        device: cuda ? "cuda" : "cpu",
        logprobChunkTokens: chunk,
        batch: { samplesPerPrompt: 1, ...batch } as never,
      });
    // The update's micro-batch: the sequences above, each its full length.
    const trainedBatch = {
      promptsPerStep: sequences,
      promptTokens: length / 2,
      responseTokens: length / 2,
      tokensPerMicroBatch: n,
    };
    const trained = planFor(trainedBatch);
    const rolled = planFor({
      promptsPerStep: prompts.length,
      promptTokens,
      responseTokens,
      tokensPerMicroBatch: n,
    });
    const update = trained.stages[0]?.phases.update;
    const planned = (update?.activations ?? 0) + (update?.logprobChunk ?? 0);
    // The split: CUDA by the chunk's growth; CPU by depth, planned the same way as measured.
    let headMeasured: number;
    let headPlanned: number;
    let headDetail: string;
    if (cuda) {
      headMeasured = perChunkRow * chunk;
      headPlanned = update?.logprobChunk ?? 0;
      headDetail = `${chunk} rows x ${vocab} vocabulary: ${(perChunkRow / vocab).toFixed(1)} B per logit measured (from the peak's growth at ${2 * chunk} rows)`;
    } else {
      const twinUpdate = planFor(trainedBatch, twinDir).stages[0]?.phases.update;
      const twinPlanned = (twinUpdate?.activations ?? 0) + (twinUpdate?.logprobChunk ?? 0);
      headMeasured = measured - 2 * (measured - twinMeasured);
      headPlanned = planned - 2 * (planned - twinPlanned);
      headDetail = `everything but the layers: the logits of all ${micro.rows} rows kept whole, the head's tensors, rope tables (the peak less twice its growth from ${shape.layers / 2} to ${shape.layers} layers)`;
    }
    const layersMeasured = measured - headMeasured;
    const layersPlanned = planned - headPlanned;
    const where = `${cuda ? "CUDA bf16, Qwen3-0.6B shape" : "CPU fp32, Qwen3 hidden 128 x 4 layers, vocab 1024"}, ${sequences} x ${length} tokens per micro-batch`;
    return [
      {
        name: "memory/update activation peak",
        value: measured / 2 ** 20,
        unit: "MiB",
        baseline: planned / 2 ** 20,
        baselineName: `plan (${cuda ? "" : "device cpu: "}activations + logprob pass)`,
        ratio: measured / planned,
        detail:
          `${where}; planned activations ${((update?.activations ?? 0) / 2 ** 20).toFixed(1)} MiB + logprob pass ${((update?.logprobChunk ?? 0) / 2 ** 20).toFixed(1)} MiB` +
          `; ${(gradients / 2 ** 20).toFixed(2)} MiB of gradients made, subtracted${cuda ? "" : "; the second of two micro-batches (its gradients in place)"}`,
      },
      {
        name: cuda ? "memory/update logprob chunk" : "memory/update logprob pass and head",
        value: headMeasured / 2 ** 20,
        unit: "MiB",
        baseline: headPlanned / 2 ** 20,
        baselineName: "plan",
        ratio: headMeasured / headPlanned,
        detail: headDetail,
      },
      {
        name: "memory/update layer activations",
        value: layersMeasured / 2 ** 20,
        unit: "MiB",
        baseline: layersPlanned / 2 ** 20,
        baselineName: "plan",
        ratio: layersMeasured / layersPlanned,
        detail: `the activation peak less the ${cuda ? "logprob chunk" : "logprob pass and head"}; ${(layersMeasured / n / shape.layers).toFixed(0)} B per token and layer measured`,
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
