// Dense matmul rate through the addon, against the same matmul from plain PyTorch in the same run.
// On a GPU: bf16 8192³ (an H200 reaches ≈ 790 TFLOP/s). On CPU: fp32 1024³.
import { engineInfo, matmulProbe } from "../src/index.js";
import { type BenchResult, pythonBaseline } from "./common.js";

export async function benchMatmul(): Promise<BenchResult> {
  const info = engineInfo();
  const gpu = info.cudaAvailable;
  const device = gpu ? "cuda:0" : "cpu";
  const dtype = gpu ? "bfloat16" : "float32";
  const size = gpu ? 8192 : 1024;
  const iterations = gpu ? 200 : 10;
  const ours = await matmulProbe({ device, dtype, m: size, n: size, k: size, iterations });
  const baseline = pythonBaseline<{ tflops: number }>("matmul_torch.py", [
    device,
    dtype,
    size,
    size,
    size,
    iterations,
  ]);
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
