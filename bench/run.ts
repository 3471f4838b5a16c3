// `npm run bench [name ...]`: runs each benchmark, prints one line per result with its ratio against
// the baseline measured in the same run, and appends them as JSON lines to $TILLER_BENCH_OUT if set.
import { appendFileSync } from "node:fs";
import type { BenchResult } from "./common.js";
import { benchController } from "./controller.js";
import { benchCpu } from "./cpu.js";
import { benchGenerate, benchGenerateNano } from "./generate.js";
import { benchMatmul } from "./matmul.js";
import { benchMemory } from "./memory.js";
import { benchMoe } from "./moe.js";
import { benchParallel, benchPipeline, benchRecompute } from "./parallel.js";
import { benchTrain, benchTrainMoe } from "./train.js";

const benches: Record<string, () => Promise<BenchResult | BenchResult[]>> = {
  matmul: benchMatmul,
  generate: benchGenerate,
  "generate-nano": benchGenerateNano,
  train: benchTrain,
  moe: benchMoe,
  "train-moe": benchTrainMoe,
  parallel: benchParallel,
  pipeline: benchPipeline,
  recompute: benchRecompute,
  controller: benchController,
  memory: benchMemory,
  cpu: benchCpu,
};

const only = process.argv.slice(2);
let failed = false;
for (const [key, bench] of Object.entries(benches)) {
  if (only.length > 0 && !only.includes(key)) continue;
  try {
    const results = await bench();
    for (const r of Array.isArray(results) ? results : [results]) {
      console.log(
        `${r.name}: ${r.value.toPrecision(4)} ${r.unit} | baseline ${r.baselineName}: ${r.baseline.toPrecision(4)} ${r.unit} | ratio ${r.ratio.toFixed(2)} | ${r.detail}`,
      );
      if (process.env.TILLER_BENCH_OUT)
        appendFileSync(process.env.TILLER_BENCH_OUT, `${JSON.stringify(r)}\n`);
    }
  } catch (error) {
    const message = (error as Error).message;
    console.log(`${key}: ${message}`);
    if (!message.startsWith("skipped:")) failed = true;
  }
}
process.exit(failed ? 1 : 0);
