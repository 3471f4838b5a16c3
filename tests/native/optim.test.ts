// AdamW, gradient clipping, schedules and the loss arithmetic against PyTorch and hand-computed
// values. Reference numbers come from tests/python/optim_reference.py.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, test } from "node:test";
import {
  type AdamWConfig,
  type HostTensor,
  linearNllForTest,
  lrAt,
  type NamedTensor,
  Optimizer,
} from "../../src/index.js";
import { addon } from "../../src/native/binding.js";
import { runPython, tempDir } from "../helpers/python.js";

/** Deterministic normal samples (mulberry32 + Box-Muller). */
function randn(seed: number) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return (n: number, scale = 1) =>
    Float32Array.from(
      { length: n },
      () => scale * Math.sqrt(-2 * Math.log(uniform() + 1e-12)) * Math.cos(2 * Math.PI * uniform()),
    );
}

/** fp32 → bf16 by truncation: the result is exact in both, so Python sees the same values. */
function toBf16(x: Float32Array): Uint16Array {
  const words = new Uint16Array(x.buffer.slice(0));
  return Uint16Array.from({ length: x.length }, (_, i) => words[2 * i + 1] ?? 0);
}

function fromBf16(x: Uint16Array): Float32Array {
  const words = new Uint16Array(2 * x.length);
  x.forEach((w, i) => {
    words[2 * i + 1] = w;
  });
  return new Float32Array(words.buffer);
}

function floats(t: HostTensor): number[] {
  return t.dtype === "bfloat16"
    ? Array.from(fromBf16(t.data as Uint16Array))
    : Array.from(t.data as Float32Array);
}

/** |a − b| ≤ atol + rtol·|ref|, element by element; names the first element that is off. */
function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  atol = 1e-6,
  rtol = 1e-6,
) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i] as number;
    const e = expected[i] as number;
    assert.ok(Math.abs(a - e) <= atol + rtol * Math.abs(e), `${what}[${i}]: ${a} vs reference ${e}`);
  }
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

// Every optimizer a test makes is disposed after it, so native memory does not wait for the GC.
const live: Optimizer[] = [];
function made(opt: Optimizer): Optimizer {
  live.push(opt);
  return opt;
}
afterEach(() => {
  for (const opt of live.splice(0)) opt.dispose();
});

const shapes: Record<string, number[]> = {
  "layers.0.mlp.weight": [4, 6],
  "layers.0.mlp.bias": [6],
  "layers.0.norm.weight": [6],
};
const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

function makeParams(dtype: "float32" | "bfloat16", seed: number): NamedTensor[] {
  const r = randn(seed);
  return Object.entries(shapes).map(([name, shape]) => {
    const values = r(numel(shape));
    return { name, shape, dtype, data: dtype === "bfloat16" ? toBf16(values) : values };
  });
}

function makeGrads(params: NamedTensor[], steps: number, seed: number): NamedTensor[][] {
  const r = randn(seed);
  return Array.from({ length: steps }, () =>
    params.map((p) => {
      const values = r(numel(p.shape), 0.1);
      return { ...p, data: p.dtype === "bfloat16" ? toBf16(values) : values };
    }),
  );
}

interface Reference {
  params: Record<string, number[]>;
  masters: Record<string, number[]>;
  exp_avg: Record<string, number[]>;
  exp_avg_sq: Record<string, number[]>;
}

function pythonAdamW(
  params: NamedTensor[],
  grads: NamedTensor[][],
  lrs: number[],
  config: Required<Omit<AdamWConfig, "noDecay" | "lr">>,
  decays: (name: string) => boolean,
): Reference {
  const dir = tempDir("adamw");
  try {
    const spec = {
      config,
      lrs,
      params: params.map((p) => ({
        name: p.name,
        shape: p.shape,
        dtype: p.dtype,
        data: floats(p),
        decays: decays(p.name),
      })),
      grads: grads.map((step) => step.map(floats)),
    };
    writeFileSync(join(dir.path, "in.json"), JSON.stringify(spec));
    runPython("optim_reference.py", ["adamw", join(dir.path, "in.json"), join(dir.path, "out.json")]);
    return JSON.parse(readFileSync(join(dir.path, "out.json"), "utf8")) as Reference;
  } finally {
    dir.cleanup();
  }
}

function stateOf(opt: Optimizer): Map<string, number[]> {
  return new Map(opt.state().map((t) => [t.name, floats(t)]));
}

const hyper = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
const lrs = [1e-3, 2e-3, 3e-3, 3e-3, 2.5e-3, 2e-3, 1.5e-3, 1e-3, 5e-4, 1e-4];

async function runSteps(opt: Optimizer, grads: NamedTensor[][], rates: number[]) {
  for (const [i, g] of grads.entries()) {
    opt.setGrads(g);
    await opt.step(rates[i]);
    opt.zeroGrad();
  }
}

test("AdamW fp32 matches torch.optim.AdamW over 10 steps", async () => {
  const params = makeParams("float32", 1);
  const grads = makeGrads(params, 10, 2);
  const ref = pythonAdamW(params, grads, lrs, hyper, () => true);
  const opt = made(Optimizer.create(params, { lr: 1e-3, ...hyper }));
  await runSteps(opt, grads, lrs);
  const state = stateOf(opt);
  for (const p of opt.params()) {
    assert.equal(p.dtype, "float32");
    assertClose(floats(p), ref.params[p.name] ?? [], p.name);
    assertClose(state.get(`exp_avg/${p.name}`) ?? [], ref.exp_avg[p.name] ?? [], `exp_avg/${p.name}`);
    assertClose(
      state.get(`exp_avg_sq/${p.name}`) ?? [],
      ref.exp_avg_sq[p.name] ?? [],
      `exp_avg_sq/${p.name}`,
      1e-9,
    );
    assert.deepEqual(state.get(`step/${p.name}`), [10]);
    assert.equal(state.has(`master/${p.name}`), false, "an fp32 parameter is its own master");
  }
  // The update moved the parameters far more than the tolerance: the comparison has teeth.
  assert.ok(maxAbsDiff(floats(opt.params()[0] as NamedTensor), floats(params[0] as NamedTensor)) > 1e-3);
});

test("AdamW bf16 parameters keep fp32 masters, as a Python fp32-master reference", async () => {
  const params = makeParams("bfloat16", 3);
  const grads = makeGrads(params, 10, 4);
  const ref = pythonAdamW(params, grads, lrs, hyper, () => true);
  const opt = made(Optimizer.create(params, { lr: 1e-3, ...hyper }));
  await runSteps(opt, grads, lrs);
  const state = stateOf(opt);
  for (const p of opt.params()) {
    assert.equal(p.dtype, "bfloat16");
    const master = state.get(`master/${p.name}`) ?? [];
    assertClose(master, ref.masters[p.name] ?? [], `master/${p.name}`);
    // the bf16 parameter is the master rounded: equal to the reference's rounding, bit for bit
    assert.deepEqual(floats(p), ref.params[p.name], p.name);
    // and the master holds precision the bf16 parameter cannot
    assert.ok(maxAbsDiff(master, floats(p)) > 0, `master/${p.name} differs from its bf16 rounding`);
  }
});

test("weight decay exclusion: biases and norms, or by name", async () => {
  const params = makeParams("float32", 5);
  const grads = makeGrads(params, 3, 6);
  const rule = (name: string) => name.endsWith(".weight") && (shapes[name]?.length ?? 0) > 1;
  const ref = pythonAdamW(params, grads, lrs.slice(0, 3), hyper, rule);
  const byRule = made(Optimizer.create(params, { lr: 1e-3, ...hyper, noDecay: "biases-and-norms" }));
  await runSteps(byRule, grads, lrs);
  const byName = made(
    Optimizer.create(params, {
      lr: 1e-3,
      ...hyper,
      noDecay: ["layers.0.mlp.bias", "layers.0.norm.weight"],
    }),
  );
  await runSteps(byName, grads, lrs);
  for (const [a, b] of byRule.params().map((p, i) => [p, byName.params()[i] as NamedTensor] as const)) {
    assertClose(floats(a), ref.params[a.name] ?? [], `rule ${a.name}`);
    assert.deepEqual(floats(b), floats(a), `names ${b.name}`);
  }
  // With zero gradients Adam's step is 0, so only decay moves a parameter: w·(1 − lr·wd).
  const zero = params.map((p) => ({ ...p, data: new Float32Array(numel(p.shape)) }));
  const decayOnly = made(Optimizer.create(params, { lr: 0.5, ...hyper, noDecay: "biases-and-norms" }));
  decayOnly.setGrads(zero);
  await decayOnly.step();
  for (const [i, p] of decayOnly.params().entries()) {
    const before = floats(params[i] as NamedTensor);
    const factor = p.name === "layers.0.mlp.weight" ? 1 - 0.5 * 0.1 : 1;
    assertClose(
      floats(p),
      before.map((v) => Math.fround(v * factor)),
      p.name,
    );
  }
});

function pythonClip(grads: Float32Array[], shapesOf: number[][], maxNorm: number) {
  const dir = tempDir("clip");
  try {
    const spec = {
      max_norm: maxNorm,
      grads: grads.map((g, i) => ({ shape: shapesOf[i], data: Array.from(g) })),
    };
    writeFileSync(join(dir.path, "in.json"), JSON.stringify(spec));
    runPython("optim_reference.py", ["clip", join(dir.path, "in.json"), join(dir.path, "out.json")]);
    return JSON.parse(readFileSync(join(dir.path, "out.json"), "utf8")) as {
      norm: number;
      grads: number[][];
    };
  } finally {
    dir.cleanup();
  }
}

test("clipGradNorm matches torch.nn.utils.clip_grad_norm_, and reports a non-finite norm", () => {
  const params = makeParams("float32", 7);
  const [grads] = makeGrads(params, 1, 8) as [NamedTensor[]];
  const gradData = grads.map((g) => g.data as Float32Array);
  const shapeList = params.map((p) => p.shape);
  const opt = made(Optimizer.create(params, { lr: 1e-3 }));
  for (const maxNorm of [0.05, 100]) {
    const ref = pythonClip(gradData, shapeList, maxNorm);
    opt.setGrads(grads);
    const result = opt.clipGradNorm(maxNorm);
    assert.equal(result.finite, true);
    assertClose([result.norm], [ref.norm], `norm (maxNorm ${maxNorm})`, 0, 1e-6);
    for (const [i, g] of opt.grads().entries()) assertClose(floats(g), ref.grads[i] ?? [], `grad ${g.name}`);
  }
  assert.ok(pythonClip(gradData, shapeList, 0.05).norm > 0.05, "the first case really clips");

  const poisoned = grads.map((g, i) =>
    i === 1
      ? { ...g, data: Float32Array.from(g.data as Float32Array, (v, j) => (j === 2 ? Number.NaN : v)) }
      : g,
  );
  opt.setGrads(poisoned);
  const bad = opt.clipGradNorm(1);
  assert.equal(bad.finite, false);
  assert.ok(Number.isNaN(bad.norm));
  assert.deepEqual(floats(opt.grads()[0] as NamedTensor), floats(grads[0] as NamedTensor), "left unscaled");
});

test("schedules: verl's constant, warmup and cosine at hand-computed steps", () => {
  const lr = 1e-3;
  assert.equal(lrAt({ kind: "constant", lr }, 0), lr);
  assert.equal(lrAt({ kind: "constant", lr }, 1000), lr);
  const warm = { kind: "constant-with-warmup", lr, warmupSteps: 10 } as const;
  assert.equal(lrAt(warm, 0), 0);
  assert.equal(lrAt(warm, 5), lr * 0.5);
  assert.equal(lrAt(warm, 9), lr * 0.9);
  assert.equal(lrAt(warm, 10), lr);
  assert.equal(lrAt(warm, 500), lr);
  const cos = { kind: "warmup-cosine", lr, warmupSteps: 10, totalSteps: 110, minLrRatio: 0.1 } as const;
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) <= 1e-15, `${a} vs ${b}`);
  close(lrAt(cos, 0), lr * 0.1); // warmup starts at the floor
  close(lrAt(cos, 5), lr * (0.1 + 0.9 * 0.5));
  close(lrAt(cos, 10), lr); // the peak, at the warmup boundary
  close(lrAt(cos, 60), lr * 0.55); // half way: cos(π/2) = 0 → (1 + 0.1) / 2
  close(lrAt(cos, 35), lr * (0.45 * Math.cos(Math.PI * 0.25) + 0.55));
  close(lrAt(cos, 110), lr * 0.1); // end of the cosine: the floor
  // Past the end verl's formula is not clamped: the cosine rises again (progress 1.9 → cos(1.9π)).
  close(lrAt(cos, 200), lr * (0.45 * Math.cos(1.9 * Math.PI) + 0.55));
  close(lrAt({ kind: "warmup-cosine", lr, totalSteps: 4 }, 4), 0);
  assert.throws(() => lrAt({ kind: "linear" as never, lr }, 0), /schedule.kind: "linear"; allowed: constant/);
  assert.throws(
    () => lrAt({ kind: "warmup-cosine", lr }, 0),
    /schedule.totalSteps: undefined must be a non-negative integer/,
  );
  assert.throws(() => lrAt(cos, -1), /step: -1 must be a non-negative integer/);
  assert.throws(
    () => lrAt({ ...cos, minLrRatio: 2 }, 0),
    /schedule.minLrRatio: 2 must be a number in \[0, 1\]/,
  );
});

test("state round trip: save, load into a fresh optimizer, continue = uninterrupted", async () => {
  const params = makeParams("bfloat16", 9);
  const grads = makeGrads(params, 8, 10);
  const whole = made(Optimizer.create(params, { lr: 1e-3, ...hyper }));
  await runSteps(whole, grads.slice(0, 4), lrs);
  const savedParams = whole.params();
  const savedState = whole.state();
  await runSteps(whole, grads.slice(4), lrs.slice(4));

  const resumed = made(Optimizer.create(savedParams, { lr: 1e-3, ...hyper }));
  resumed.loadState(savedState);
  await runSteps(resumed, grads.slice(4), lrs.slice(4));
  assert.deepEqual(resumed.state(), whole.state());
  assert.deepEqual(resumed.params(), whole.params());

  // Without the state (moments at zero, masters = bf16 values) the result differs.
  const fresh = made(Optimizer.create(savedParams, { lr: 1e-3, ...hyper }));
  await runSteps(fresh, grads.slice(4), lrs.slice(4));
  assert.notDeepEqual(fresh.params(), whole.params());

  const missing = savedState.filter((t) => t.name !== "exp_avg/layers.0.mlp.bias");
  assert.throws(() => resumed.loadState(missing), /'exp_avg\/layers.0.mlp.bias' is missing from the state/);
  const extra = [...savedState, { ...(savedState[0] as NamedTensor), name: "exp_avg/nope" }];
  assert.throws(() => resumed.loadState(extra), /'exp_avg\/nope' names no state of this optimizer/);
  const wrongShape = savedState.map((t) => (t.name === "step/layers.0.mlp.bias" ? { ...t, shape: [1] } : t));
  assert.throws(
    () => resumed.loadState(wrongShape),
    /'step\/layers.0.mlp.bias' has shape \[1\], expected \[\]/,
  );
});

test("offload and reload leave the next step identical", async () => {
  const params = makeParams("bfloat16", 11);
  const grads = makeGrads(params, 3, 12);
  const a = made(Optimizer.create(params, { lr: 1e-3, ...hyper }));
  const b = made(Optimizer.create(params, { lr: 1e-3, ...hyper }));
  await runSteps(a, grads.slice(0, 2), lrs);
  await runSteps(b, grads.slice(0, 2), lrs);
  await b.offload();
  assert.equal(b.offloaded, true);
  assert.deepEqual(b.state(), a.state(), "state readable while offloaded");
  b.setGrads(grads[2] as NamedTensor[]);
  await assert.rejects(b.step(), /offloaded to the host; call reload\(\) first/);
  await b.reload();
  assert.equal(b.offloaded, false);
  await b.step(lrs[2]);
  await runSteps(a, grads.slice(2), lrs.slice(2));
  assert.deepEqual(b.params(), a.params());
  assert.deepEqual(b.state(), a.state());
});

test("gradient accumulation: 4 micro-batches with the global normaliser = one batch", async () => {
  const [D, V, T] = [5, 7, 24];
  const r = randn(13);
  const weight = { name: "lm_head.weight", dtype: "float32" as const, shape: [D, V], data: r(D * V) };
  const x = r(T * D);
  const targets = Int32Array.from({ length: T }, (_, i) => (i * 5 + 3) % V);
  // Unequal masked counts per micro-batch, so a per-micro-batch normaliser would be wrong.
  const mask = Float32Array.from({ length: T }, (_, i) =>
    i < 6 ? 1 : i < 12 ? Number(i % 3 === 0) : Number(i % 2 === 0),
  );
  const tokens = mask.reduce((a, b) => a + b, 0);
  const slice = (from: number, to: number) => ({
    x: { data: x.slice(from * D, to * D), dtype: "float32" as const, shape: [to - from, D] },
    targets: { data: targets.slice(from, to), dtype: "int32" as const, shape: [to - from] },
    mask: { data: mask.slice(from, to), dtype: "float32" as const, shape: [to - from] },
  });
  const gradAfter = (parts: [number, number][], normaliser: (m: Float32Array) => number) => {
    const opt = made(Optimizer.create([weight], { lr: 1e-2 }));
    let loss = 0;
    for (const [from, to] of parts) {
      const b = slice(from, to);
      loss += linearNllForTest(opt, weight.name, b.x, b.targets, b.mask, normaliser(b.mask.data));
    }
    return { loss, grad: floats(opt.grads()[0] as NamedTensor) };
  };
  const whole = gradAfter([[0, T]], () => tokens);
  const micro: [number, number][] = [
    [0, 6],
    [6, 12],
    [12, 18],
    [18, 24],
  ];
  const accumulated = gradAfter(micro, () => tokens);
  assertClose([accumulated.loss], [whole.loss], "loss", 1e-6);
  assertClose(accumulated.grad, whole.grad, "grad", 1e-7);
  const local = gradAfter(micro, (m) => m.reduce((a, b) => a + b, 0));
  assert.ok(maxAbsDiff(local.grad, whole.grad) > 1e-3, "a per-micro-batch normaliser gives another gradient");
  assert.ok(whole.loss > 0);
});

test("bad arguments name the field; disposed and foreign handles are refused", async () => {
  const params = makeParams("float32", 14);
  assert.throws(() => Optimizer.create([], { lr: 1 }), /params: at least one parameter is needed/);
  assert.throws(() => Optimizer.create(params, { lr: -1 }), /config.lr: -1 must be a number >= 0/);
  assert.throws(
    () => Optimizer.create(params, { lr: 1, beta2: 1 }),
    /config.beta2: 1 must be a number in \[0, 1\)/,
  );
  assert.throws(
    () => Optimizer.create(params, { lr: 1, noDecay: "norms" as never }),
    /config.noDecay: "norms"; allowed/,
  );
  assert.throws(
    () =>
      Optimizer.create([{ ...(params[0] as NamedTensor), dtype: "int32", data: new Int32Array(24) }], {
        lr: 1,
      }),
    /params\[0\].dtype: int32; allowed: float32, bfloat16, float16/,
  );
  assert.throws(
    () => Optimizer.create([params[0] as NamedTensor, params[0] as NamedTensor], { lr: 1 }),
    /params\[1\].name: "layers.0.mlp.weight" appears twice/,
  );
  assert.throws(() => Optimizer.create(params, { lr: 1 }, "tpu"), /device: "tpu" is not a device/);
  const opt = Optimizer.create(params, { lr: 1 });
  assert.throws(
    () => opt.setGrads([{ ...(params[0] as NamedTensor), name: "nope" }]),
    /grads\[0\].name: 'nope' is not a parameter of this optimizer/,
  );
  assert.throws(
    () => opt.setGrads([{ ...(params[1] as NamedTensor), dtype: "bfloat16", data: new Uint16Array(6) }]),
    /grads\[0\].dtype: bfloat16, but parameter 'layers.0.mlp.bias' is float32/,
  );
  assert.throws(
    () => opt.setGrads([{ ...(params[1] as NamedTensor), shape: [2, 3] }]),
    /grads\[0\].shape: does not match/,
  );
  assert.throws(() => opt.clipGradNorm(0), /maxNorm: 0 must be a number > 0/);
  await assert.rejects(opt.step(Number.NaN), /lr: NaN must be a number >= 0/);
  // A second call while a step runs is refused instead of racing it.
  opt.setGrads(params);
  const running = opt.step();
  assert.throws(() => opt.params(), /the optimizer is busy with an async call; await it first/);
  await running;
  opt.dispose();
  opt.dispose();
  assert.throws(() => opt.params(), /optimizer: disposed; create a new one/);
  assert.throws(() => addon().optimizerParams({} as never), /handle: not an optimizer handle/);
});
