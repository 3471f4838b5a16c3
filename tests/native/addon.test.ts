// The addon's first surface: engine info, the tensor round trip of every dtype, argument checks.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  dtypes,
  engineInfo,
  type HostTensor,
  matmulProbe,
  roundTrip,
  typedArrayFor,
} from "../../src/index.js";

test("engineInfo reports torch and the CPU", () => {
  const info = engineInfo();
  assert.match(info.torchVersion, /^2\.\d+\.\d+$/);
  assert.equal(info.devices[0]?.device, "cpu");
  assert.equal(typeof info.cudaAvailable, "boolean");
  assert.ok(info.cpuThreads >= 1);
  if (!info.cudaAvailable) assert.equal(info.devices.length, 1);
});

function sample(dtype: HostTensor["dtype"], n: number): HostTensor {
  const data = new typedArrayFor[dtype](n);
  for (let i = 0; i < n; i++) {
    const v = (i % 7) - 3;
    if (data instanceof BigInt64Array) data[i] = BigInt(v) * 1_000_000_000_000n;
    else if (dtype === "bfloat16") data[i] = new Uint16Array(new Float32Array([v]).buffer)[1] ?? 0;
    else if (dtype === "float16") data[i] = [0xc200, 0xc000, 0xbc00, 0, 0x3c00, 0x4000, 0x4200][i % 7] ?? 0;
    else if (dtype === "bool") data[i] = i % 2;
    else if (dtype === "uint8") data[i] = i % 251;
    else (data as Float32Array)[i] = v;
  }
  return { data, dtype, shape: [3, n / 3] };
}

function expectedSum(t: HostTensor): number {
  if (t.dtype === "bfloat16" || t.dtype === "float16") {
    let s = 0;
    for (let i = 0; i < t.data.length; i++) s += (i % 7) - 3;
    return s;
  }
  let s = 0;
  for (const v of t.data) s += Number(v);
  return s;
}

for (const dtype of dtypes) {
  test(`round trip ${dtype}: values, shape, no copy on CPU`, () => {
    const t = sample(dtype, 30);
    const out = roundTrip(t, "cpu");
    assert.equal(out.dtype, dtype);
    assert.deepEqual(out.shape, t.shape);
    assert.ok(out.data instanceof typedArrayFor[dtype]);
    assert.deepEqual(Array.from(out.data as ArrayLike<unknown>), Array.from(t.data as ArrayLike<unknown>));
    assert.equal(out.sum, expectedSum(t));
    assert.equal(out.aliased, true, "CPU round trip should share memory");
  });
}

test("round trip keeps a subarray's offset", () => {
  const whole = new Float32Array([9, 9, 1, 2, 3, 4]);
  const out = roundTrip({ data: whole.subarray(2), dtype: "float32", shape: [4] });
  assert.deepEqual(Array.from(out.data as Float32Array), [1, 2, 3, 4]);
  assert.equal(out.sum, 10);
});

test("round trip of an empty tensor", () => {
  const out = roundTrip({ data: new Int32Array(0), dtype: "int32", shape: [0, 5] });
  assert.deepEqual(out.shape, [0, 5]);
  assert.equal(out.data.length, 0);
});

test("output outlives a collected input", () => {
  let out = roundTrip({ data: new Float64Array([1.5, 2.5]), dtype: "float64", shape: [2] });
  globalThis.gc?.();
  assert.deepEqual(Array.from(out.data as Float64Array), [1.5, 2.5]);
  out = roundTrip({ data: new Float64Array([0]), dtype: "float64", shape: [1] });
  assert.equal(out.sum, 0);
});

test("bad arguments name the field", () => {
  const good = { data: new Float32Array(6), dtype: "float32" as const, shape: [2, 3] };
  assert.throws(
    () => roundTrip({ ...good, dtype: "float8" as never }),
    /^TypeError: tensor.dtype: "float8" is not a dtype; allowed: float32/,
  );
  assert.throws(
    () => roundTrip({ ...good, data: new Int32Array(6) }),
    /tensor.data: dtype float32 travels in a Float32Array, found Int32Array/,
  );
  assert.throws(
    () => roundTrip({ ...good, shape: [4, 2] }),
    /tensor.shape: \[4, 2\] holds 8 elements, but data has 6/,
  );
  assert.throws(
    () => roundTrip({ ...good, shape: [2, -3] }),
    /tensor.shape\[1\]: -3 must be a non-negative integer/,
  );
  assert.throws(() => roundTrip({ ...good, shape: [2, 1.5] as number[] }), /shape\[1\]: 1.5/);
  assert.throws(() => roundTrip(good, "tpu"), /device: "tpu" is not a device; allowed: cpu, cuda, cuda:N/);
  assert.throws(() => roundTrip(null as never), /tensor: expected \{data, dtype, shape\}/);
});

test("a CUDA device on a machine without one is refused by the engine", {
  skip: engineInfo().cudaAvailable,
}, () => {
  assert.throws(
    () => roundTrip({ data: new Float32Array(1), dtype: "float32", shape: [1] }, "cuda:0"),
    /device: 'cuda:0' asked for, but this build has no CUDA device/,
  );
});

test("matmulProbe runs off the JS thread and measures a rate", async () => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const result = await matmulProbe({ m: 384, n: 384, k: 384, iterations: 40 });
  clearInterval(timer);
  assert.ok(result.seconds > 0);
  assert.equal(result.flop, 2 * 384 ** 3 * 40);
  assert.ok(result.tflops > 0);
  assert.ok(ticks > 0, "the event loop kept running while the probe ran");
  await assert.rejects(matmulProbe({ m: 0 }), /m: 0 must be a positive integer/);
  await assert.rejects(
    matmulProbe({ dtype: "int32" }),
    /dtype: matmulProbe needs a floating dtype, found int32/,
  );
});
