// `npm run bench`: runs each benchmark, prints one line per result with its ratio against the
// baseline measured in the same run, and writes them as JSON lines to $TILLER_BENCH_OUT if set.
import { appendFileSync } from "node:fs";
import { type BenchResult, benchMatmul } from "./matmul.js";

const benches: Record<string, () => Promise<BenchResult>> = { matmul: benchMatmul };

const only = process.argv.slice(2);
for (const [key, bench] of Object.entries(benches)) {
  if (only.length > 0 && !only.includes(key)) continue;
  const r = await bench();
  console.log(
    `${r.name}: ${r.value.toPrecision(4)} ${r.unit} | baseline ${r.baselineName}: ${r.baseline.toPrecision(4)} ${r.unit} | ratio ${r.ratio.toFixed(3)} | ${r.detail}`,
  );
  if (process.env.TILLER_BENCH_OUT) appendFileSync(process.env.TILLER_BENCH_OUT, `${JSON.stringify(r)}\n`);
}
