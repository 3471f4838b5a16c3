// Training throughput: a Qwen3-0.6B-shaped model (random weights, bf16 parameters with fp32 AdamW
// masters), one optimizer step over 8 × 2048 tokens, against HF transformers + torch.optim.AdamW on
// the same GPU in the same run. Needs CUDA.
import { join } from "node:path";
import { engineInfo, Model } from "../src/index.js";
import { type BenchResult, benchModel, pythonBaseline } from "./common.js";

const sequences = 8;
const sequenceLength = 2048;
const steps = 5;

export function benchTrain(): Promise<BenchResult[]> {
  return trainBench("qwen3-0.6b");
}

/** The same step on the guide's Qwen3-MoE shape (8 layers, 128 experts, top-8, 5.6B parameters). */
export function benchTrainMoe(): Promise<BenchResult[]> {
  return trainBench("qwen3-moe-5.6b");
}

async function trainBench(shape: string): Promise<BenchResult[]> {
  if (!engineInfo().cudaAvailable) throw new Error("skipped: needs a CUDA device");
  const dir = benchModel(shape);
  // The baseline first, in its own process: freed memory stays in our allocator's cache, so the
  // other order could starve it on a large model.
  const hf = pythonBaseline<{ tokens_per_second: number; peak_memory_gib: number }>("hf_train.py", [
    dir,
    sequences,
    sequenceLength,
    steps,
  ]);
  const model = await Model.load(dir, { device: "cuda:0", dtype: "bfloat16" });
  try {
    const total = sequences * sequenceLength;
    const tokens = Int32Array.from({ length: total }, (_, i) => (i * 7919 + 13) % 151936);
    const cu = Int32Array.from({ length: sequences + 1 }, (_, i) => i * sequenceLength);
    const targets = total - sequences;
    const mask = new Float32Array(targets).fill(1);
    model.initOptimizer({ lr: 1e-5, schedule: { kind: "constant" } });
    const step = async () => {
      await model.trainStep(tokens, cu, mask, targets);
      await model.optimizerStep();
    };
    await step(); // warm-up: allocator, kernels, optimizer state
    // Phases timed apart: forward only, forward + backward, optimizer.
    let forwardMs = 0;
    let backwardMs = 0;
    let optimizerMs = 0;
    let lastGradNorm = Number.NaN;
    let skipped = 0;
    const start = performance.now();
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now();
      await model.logprobs(tokens, cu);
      const t1 = performance.now();
      await model.trainStep(tokens, cu, mask, targets);
      const t2 = performance.now();
      const update = await model.optimizerStep();
      const t3 = performance.now();
      lastGradNorm = update.gradNorm;
      if (update.skipped) skipped++;
      forwardMs += (t1 - t0) / steps;
      backwardMs += (t2 - t1) / steps;
      optimizerMs += (t3 - t2) / steps;
    }
    const seconds = ((performance.now() - start) / 1000 - (forwardMs * steps) / 1000) / steps;
    // A Kineto trace of one forward+backward (and one optimizer step) for finding where time goes.
    const traceDir = process.env.TILLER_PROFILE_DIR;
    if (traceDir) {
      model.profileNext(join(traceDir, `train-step-${shape}.trace.json`));
      await model.trainStep(tokens, cu, mask, targets);
      model.profileNext(join(traceDir, `optimizer-step-${shape}.trace.json`));
      await model.optimizerStep();
    }
    const ours = total / seconds;
    return [
      {
        name: `train step ${shape} bf16, ${sequences}×${sequenceLength} tokens, AdamW`,
        value: ours,
        unit: "tok/s",
        baseline: hf.tokens_per_second,
        baselineName: "HF transformers + torch AdamW",
        ratio: ours / hf.tokens_per_second,
        detail: `${(seconds * 1000).toFixed(0)} ms/step (forward alone ${forwardMs.toFixed(0)} ms, forward+backward ${backwardMs.toFixed(0)} ms, optimizer ${optimizerMs.toFixed(0)} ms; grad norm ${lastGradNorm.toPrecision(3)}, ${skipped} of ${steps} updates skipped); HF peak ${hf.peak_memory_gib.toFixed(1)} GiB`,
      },
    ];
  } finally {
    model.dispose();
  }
}
