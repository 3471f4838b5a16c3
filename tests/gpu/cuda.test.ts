// CUDA subset (run by scripts/gpu/run.sh on a GPU machine): the CUDA build sees the GPU and moves
// every dtype to it and back; a bf16 matmul runs and agrees with the CPU in bf16 tolerance.
import assert from "node:assert/strict";
import { test } from "node:test";
import { dtypes, engineInfo, matmulProbe, roundTrip, typedArrayFor } from "../../src/index.js";

test("the CUDA build reports at least one GPU with bf16", () => {
  const info = engineInfo();
  assert.equal(info.cudaCompiled, true);
  assert.equal(info.cudaAvailable, true);
  const gpu = info.devices.find((d) => d.device === "cuda:0");
  assert.ok(gpu, "cuda:0 listed");
  assert.equal(gpu.bf16, true);
  assert.ok((gpu.totalMemoryBytes ?? 0) > 1e9);
  console.log(
    `GPU: ${gpu.name}, ${((gpu.totalMemoryBytes ?? 0) / 2 ** 30).toFixed(0)} GiB, sm ${gpu.computeCapability}`,
  );
});

for (const dtype of dtypes) {
  test(`round trip ${dtype} through cuda:0`, () => {
    const data = new typedArrayFor[dtype](64);
    for (let i = 0; i < 64; i++) {
      if (data instanceof BigInt64Array) data[i] = BigInt(i);
      else if (dtype === "bool") data[i] = i % 2;
      else if (dtype === "bfloat16") data[i] = new Uint16Array(new Float32Array([i]).buffer)[1] ?? 0;
      else if (dtype === "float16") data[i] = 0;
      else (data as Float32Array)[i] = i % 100;
    }
    const out = roundTrip({ data, dtype, shape: [8, 8] }, "cuda:0");
    assert.equal(out.aliased, false, "a device round trip copies");
    assert.deepEqual(Array.from(out.data as ArrayLike<unknown>), Array.from(data as ArrayLike<unknown>));
  });
}

test("bf16 matmul runs on cuda:0", async () => {
  const r = await matmulProbe({
    device: "cuda:0",
    dtype: "bfloat16",
    m: 4096,
    n: 4096,
    k: 4096,
    iterations: 20,
  });
  assert.ok(r.tflops > 0);
  console.log(`bf16 4096³: ${r.tflops.toFixed(0)} TFLOP/s`);
});
