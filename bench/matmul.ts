// Dense matmul rate through the addon, against the same matmul from plain PyTorch in the same run.
// On a GPU: bf16 8192³ (an H200 reaches ≈ 790 TFLOP/s). On CPU: fp32 1024³.
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { readSetupEnv, repoRoot } from "../scripts/setup.js";
import { engineInfo, matmulProbe } from "../src/index.js";

export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  baseline: number;
  baselineName: string;
  ratio: number;
  detail: string;
}

export async function benchMatmul(): Promise<BenchResult> {
  const info = engineInfo();
  const gpu = info.cudaAvailable;
  const device = gpu ? "cuda:0" : "cpu";
  const dtype = gpu ? "bfloat16" : "float32";
  const size = gpu ? 8192 : 1024;
  const iterations = gpu ? 200 : 10;
  const ours = await matmulProbe({ device, dtype, m: size, n: size, k: size, iterations });
  const torchOut = execFileSync(readSetupEnv().python, [
    join(repoRoot, "bench", "python", "matmul_torch.py"),
    device,
    dtype,
    ...[size, size, size, iterations].map(String),
  ]).toString();
  const baseline = JSON.parse(torchOut.trim().split("\n").pop() ?? "{}") as { tflops: number };
  const name = gpu ? (info.devices[1]?.name ?? "cuda") : "cpu";
  return {
    name: `matmul ${dtype} ${size}³ on ${name}`,
    value: ours.tflops,
    unit: "TFLOP/s",
    baseline: baseline.tflops,
    baselineName: "PyTorch (Python) same shape",
    ratio: ours.tflops / baseline.tflops,
    detail: `${iterations} iterations, ${ours.seconds.toFixed(3)} s, ${(ours.flop / 1e12).toFixed(1)} TFLOP`,
  };
}
