// The planner on the published models (their real config.json values, tests/plan/fixtures):
// parameter totals against the published sizes, full plans with verl's layouts, the search's
// ranking and refusal, the errors for bad input, and the FLOP model perf/mfu/actor uses.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { repoRoot } from "../../scripts/setup.js";
import { defaultPeakFlops, type StepBatch, stepMetrics } from "../../src/controller/step.js";
import { planHtml, planMemorySpec, planRows } from "../../src/notebook/index.js";
import {
  forwardFlopsPerToken,
  kvBytesPerToken,
  modelSpec,
  type Plan,
  type PlanConfig,
  PlanSearchError,
  parameterCounts,
  plan,
  search,
  stageLayers,
  trainingFlops,
} from "../../src/plan/index.js";

const fixture = (name: string) => join(repoRoot, "tests", "plan", "fixtures", `${name}.json`);
const deepseek = fixture("deepseek-v3");
const qwen235 = fixture("qwen3-235b-a22b");
const qwen30 = fixture("qwen3-30b-a3b");
const B = 1e9;

test("parameter totals from the shapes match the published sizes (rounded as published)", () => {
  // DeepSeek-V3: 671B total, 37B activated per token (the MTP layer not counted, as published).
  const d = parameterCounts(modelSpec(deepseek));
  assert.equal(Math.round(d.total / B), 671);
  assert.equal(Math.floor(d.active / B), 37);
  assert.ok(Math.abs(d.byKind.expert / B - 653.9) < 0.05, `routed experts ${d.byKind.expert}`);
  assert.ok(modelSpec(deepseek).notes.some((n) => n.includes("multi-token-prediction")));
  // Qwen3-235B-A22B: 235B / 22B; Qwen3-30B-A3B: 30.5B / 3.3B.
  const q = parameterCounts(modelSpec(qwen235));
  assert.equal(Math.round(q.total / B), 235);
  assert.equal(Math.floor(q.active / B), 22);
  const s = parameterCounts(modelSpec(qwen30));
  assert.equal((s.total / B).toFixed(1), "30.5");
  assert.equal(Math.floor(s.active / 1e8) / 10, 3.3);
});

test("KV cache per token: MLA's latent whole on every rank, GQA's heads split (one each when fewer than ranks)", () => {
  assert.equal(kvBytesPerToken(modelSpec(deepseek), 32, "bfloat16"), 70_272);
  assert.equal(kvBytesPerToken(modelSpec(qwen235), 1, "bfloat16"), 192_512);
  assert.equal(kvBytesPerToken(modelSpec(qwen235), 4, "bfloat16"), 48_128);
  assert.equal(kvBytesPerToken(modelSpec(qwen235), 8, "bfloat16"), 48_128);
});

test("pipeline stages: DeepSeek-V3's 61 layers over 16 stages split 3, 14 × 4, 2 (verl's recipe); given counts are kept", () => {
  const stages = stageLayers(61, 16);
  assert.deepEqual(
    stages.map(([a, b]) => b - a),
    [3, ...Array(14).fill(4), 2],
  );
  assert.deepEqual(
    stageLayers(94, 8, 5, 5).map(([a, b]) => b - a),
    [5, 14, 14, 14, 14, 14, 14, 5],
  );
  assert.throws(() => stageLayers(61, 16, 3), /give both/);
  assert.throws(
    () => stageLayers(61, 16, 3, 3),
    /first 3 \+ last 3 leave 55 layers, which the 14 middle stages cannot share evenly/,
  );
});

test("DeepSeek-V3 on 512 H20 with verl's layout (TP1 EP32 PP16, rollout TP32): a full plan, expert state unsharded (EDP 1)", () => {
  const p = plan({
    model: deepseek,
    recipe: "deepseek-v3-671b",
    gpu: "H20-96GB",
    rollout: { tensor: 32 },
    offload: "all",
    recompute: "full",
  });
  assert.equal(p.train.describe, "EP32 × DP32 × PP16");
  assert.equal(p.train.expertData, 1);
  assert.equal(p.stages.length, 16);
  assert.ok(p.notes.some((n) => n.startsWith("expert state is not sharded")));
  // A middle stage: 4 MoE layers of 8 local experts each, bf16, every byte of masters and
  // moments kept for them (16 B per element with the norm mask).
  const middle = p.stages[1];
  assert.ok(middle);
  const expertElements = 4 * 8 * 3 * 7168 * 2048;
  assert.equal(middle.static.parameterElements.expert, expertElements);
  assert.equal(middle.static.optimizer.shardElements.expert, expertElements);
  // Every parameter lives on exactly one stage, once per tensor × expert slice.
  const held = p.stages.reduce(
    (n, s) =>
      n +
      s.static.parameterElements.expert * 32 +
      (s.static.parameterElements.dense + s.static.parameterElements.embedding),
    0,
  );
  assert.equal(held, p.model.parameters.total);
  assert.equal(p.rollout.kvBytesPerToken, 70_272);
  assert.ok(p.fits, `fits: ${p.trainingPeak.bytes}`);
  assert.deepEqual(
    p.time.parts.map((x) => x.name),
    ["rollout", "reshard", "offload", "old logprobs", "update"],
  );
  assert.ok(p.time.totalSeconds > 0 && Number.isFinite(p.time.totalSeconds));
  // Without recompute, 15 micro-batches of 6144 tokens in flight on stage 1 do not fit: the plan says so.
  const plain = plan({
    model: deepseek,
    recipe: "deepseek-v3-671b",
    gpu: "H20-96GB",
    rollout: { tensor: 32 },
    offload: "all",
  });
  assert.equal(plain.fits, false);
  assert.equal(plain.trainingPeak.phase, "update");
  assert.ok(plain.shortBytes > 0);
});

test("Qwen3-235B on 128 H20 with verl's layout (TP4 EP4 PP8, rollout TP8): a full plan", () => {
  const p = plan({
    model: qwen235,
    recipe: "qwen3-235b",
    gpu: "H20-96GB",
    gpus: 128,
    // The recipe keeps verl's 256-GPU split (5, 6 × 14, 5); on 128 H20 with ETP 1 its 14-layer
    // stages do not fit, the balanced 11, 6 × 12, 11 does.
    train: { expertTensor: 1, sequenceParallel: true, firstStageLayers: 11, lastStageLayers: 11 },
    rollout: { tensor: 8 },
    offload: "all",
  });
  assert.equal(p.train.describe, "TP4 × EP4 × DP4 × PP8 (SP)");
  assert.equal(p.train.expertData, 4);
  assert.deepEqual(
    p.stages.map((s) => s.layers[1] - s.layers[0]),
    [11, 12, 12, 12, 12, 12, 12, 11],
  );
  // 32 of 128 experts per rank, sharded 4 ways for the optimizer.
  const mid = p.stages[1];
  assert.ok(mid);
  assert.equal(mid.static.parameterElements.expert, 12 * 32 * 3 * 4096 * 1536);
  assert.equal(mid.static.optimizer.shardElements.expert, (12 * 32 * 3 * 4096 * 1536) / 4);
  assert.equal(p.rollout.kvBytesPerToken, 48_128);
  assert.ok(p.stages[0]?.traffic.some((e) => e.group === "expert" && e.collective === "allToAll"));
  assert.ok(p.time.totalSeconds > 0);
});

const qwen30Batch: PlanConfig["batch"] = {
  promptsPerStep: 128,
  samplesPerPrompt: 8,
  promptTokens: 1024,
  responseTokens: 4096,
};

for (const [gpu, gpus] of [
  ["H200-141GB", 8],
  ["H20-96GB", 16],
] as const) {
  test(`--search: Qwen3-30B-A3B on ${gpus} × ${gpu} returns ranked layouts in under 5 s`, () => {
    const started = Date.now();
    const r = search({ model: qwen30, gpu, gpus, batch: qwen30Batch });
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 5000, `${elapsed} ms`);
    assert.ok(r.fitting > 0 && r.ranked.length === 5);
    for (let i = 1; i < r.ranked.length; i++) {
      assert.ok(
        (r.ranked[i]?.plan.time.totalSeconds ?? 0) >= (r.ranked[i - 1]?.plan.time.totalSeconds ?? 0) * 0.999,
        "ranked by estimated step time",
      );
    }
    for (const { plan: p, why } of r.ranked) {
      assert.ok(p.fits);
      assert.match(why, /training peak .* of .* usable/);
    }
    console.log(
      `search ${gpus} × ${gpu}: ${r.valid} valid, ${r.fitting} fit, ${elapsed} ms; best: ${r.ranked[0]?.why}`,
    );
  });
}

test("--search refuses a model that fits nowhere, naming the smallest missing amount", () => {
  let error: unknown;
  try {
    search({
      model: deepseek,
      gpu: "H20-96GB",
      gpus: 8,
      batch: { promptsPerStep: 8, samplesPerPrompt: 2, promptTokens: 512, responseTokens: 512 },
    });
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PlanSearchError, String(error));
  assert.match(error.message, /does not fit on 8 × H20-96GB in any of the \d+ valid layouts/);
  assert.match(error.message, /the closest \(train .*\) is [\d.]+ TiB per GPU short/);
  // The amount named is the least any layout lacks.
  assert.ok(error.closest && error.shortBytes === error.closest.shortBytes && error.shortBytes > 0);
});

test("bad input names the field, the value and what is allowed", () => {
  const base: PlanConfig = { model: qwen30, gpu: "H20-96GB", gpus: 16, batch: qwen30Batch };
  assert.throws(
    () => plan({ ...base, gpu: "H30" }),
    /gpu: "H30" is not a known GPU type; known: H20-96GB, H100-80GB/,
  );
  assert.throws(
    () => plan({ ...base, train: { tensor: 3 } }),
    /train\.tensor: .* does not divide the 16 GPUs; allowed tensor: 1, 2, 4, 8, 16/,
  );
  assert.throws(
    () => plan({ ...base, train: { expert: 3 } }),
    /train\.expert: expert 3 × expertTensor 1 must divide/,
  );
  assert.throws(
    () => plan({ ...base, gpus: 12, train: { tensor: 6 } }),
    /train\.tensor: 6 does not divide the 32 attention heads, the 4 key-value heads .*; allowed: 1, 2, 4, 8/,
  );
  assert.throws(
    () => plan({ ...base, rollout: { tensor: 3 } }),
    /rollout\.tensor: 3 does not divide the 16 GPUs; allowed: 1, 2, 4, 8, 16/,
  );
  assert.throws(
    () => plan({ ...base, batch: { ...qwen30Batch, promptsPerStep: 0 } }),
    /batch\.promptsPerStep: 0 must be an integer ≥ 1/,
  );
  assert.throws(() => plan({ ...base, batch: { samplesPerPrompt: 8 } }), /batch\.promptsPerStep: missing/);
  assert.throws(() => plan({ ...base, offload: "some" as never }), /offload: "some"; allowed: "none", "all"/);
  assert.throws(() => plan({ ...base, device: "tpu" as never }), /device: "tpu"; allowed: "cuda", "cpu"/);
  assert.throws(
    () => plan({ ...base, recompute: "half" as never }),
    /recompute: "half"; allowed: "none", "full"/,
  );
  assert.throws(
    () => plan({ ...base, assumptions: { hbmEfficiency: 1.5 } }),
    /assumptions\.hbmEfficiency: 1\.5 must be in \(0, 1\]/,
  );
  assert.throws(() => plan({ ...base, recipe: "nope" }), /recipe: "nope" is not a recipe; known: grpo-gsm8k/);
  assert.throws(() => plan({ ...base, tensor: 2 } as never), /tensor: unknown; allowed: model, recipe, gpu/);
  assert.throws(
    () => plan({ ...base, model: { architectures: ["GPT2LMHeadModel"] } }),
    /architecture "GPT2LMHeadModel" is not supported; supported: Qwen2ForCausalLM/,
  );
  assert.throws(
    () => plan({ ...base, model: { architectures: ["Qwen3ForCausalLM"], hidden_size: 64 } }),
    /config\.json: num_attention_heads is missing/,
  );
  assert.throws(
    () => plan({ ...base, gpu: { name: "custom", memoryBytes: 1e9 } }),
    /gpu\.bf16FlopsPerSecond: missing; a custom GPU type gives/,
  );
  // A custom entry starting from a known type.
  const slowNet = plan({ ...base, gpu: { name: "H20-96GB", networkBytesPerSecond: 12.5e9 } });
  assert.equal(slowNet.cluster.gpu.networkBytesPerSecond, 12.5e9);
});

test("device: the CUDA kernels' model by default (the same plan as device cuda), the CPU kernels' on request", () => {
  // Qwen3-30B-A3B at EP16 (one tensor rank): micro-batches of 4 sequences of 512 + 512 tokens.
  const base: PlanConfig = {
    model: qwen30,
    gpu: "H20-96GB",
    gpus: 16,
    train: { expert: 16 },
    batch: {
      promptsPerStep: 64,
      samplesPerPrompt: 1,
      promptTokens: 512,
      responseTokens: 512,
      tokensPerMicroBatch: 4096,
    },
  };
  const byDefault = plan(base);
  const cuda = plan({ ...base, device: "cuda" });
  assert.deepEqual(cuda, byDefault);
  assert.equal(byDefault.config.device, "cuda");
  const update = (p: Plan) => p.stages[0]?.phases.update as Record<string, number>;
  // CUDA: one chunk of 1,024 rows of bf16 logits.
  assert.equal(update(byDefault).logprobChunk, 1024 * 151_936 * 2);
  const cpu = plan({ ...base, device: "cpu" });
  assert.ok(
    cpu.notes.some((n) =>
      n.startsWith(
        "device cpu: activations and the logprob pass follow the CPU engine's kernels (measured in float32 only)",
      ),
    ),
  );
  // CPU: every predicted row's logits kept for the backward (4,092 rows, 1.2 GB: under the 2 GiB
  // limit), the row statistics and targets, the gradient of the lm-head's input rows, and, with
  // four chunks, a chunk's fp32 lm-head product beside the fp32 sum it is added to.
  const kept = 4092 * 151_936 * 2;
  const lmHead = 2 * 151_936 * 2048 * 4;
  assert.equal(update(cpu).logprobChunk, kept + lmHead + 4092 * 16 + 4092 * 2048 * 2);
  // Composite norms, the log-sum-exp, no fused SwiGLU: more per token than the CUDA model.
  const perLayer = (p: Plan) => (p.stages[0]?.activations.perMicroBatch ?? 0) / 48;
  assert.ok(perLayer(cpu) > 1.1 * perLayer(byDefault), `${perLayer(cpu)} vs ${perLayer(byDefault)}`);
  // Four times the rows: 5 GB of logits would pass the limit, so each chunk's are recomputed in
  // the backward beside their gradient.
  const long = plan({
    ...base,
    device: "cpu",
    batch: { ...base.batch, promptsPerStep: 256, tokensPerMicroBatch: 16_384 },
  });
  assert.equal(update(long).logprobChunk, 2 * 1024 * 151_936 * 2 + lmHead + 16_368 * 16 + 16_368 * 2048 * 2);
  // Static memory and times do not depend on the kernels.
  assert.deepEqual(cpu.stages[0]?.static, byDefault.stages[0]?.static);
  assert.deepEqual(cpu.time, byDefault.time);
});

test("perf/mfu/actor uses the planner's FLOP model: active parameters for MoE, attention by sequence length", () => {
  const spec = modelSpec(qwen30);
  const samples = [
    { prompt: new Int32Array(100), response: new Int32Array(300) },
    { prompt: new Int32Array(50), response: new Int32Array(10) },
  ];
  const batch = {
    step: 1,
    samples: samples.map((s) => ({ ...s, extra: {}, score: 0 })),
    rounds: 1,
    stagesDone: [],
    timings: { "timing_s/update_actor": 2 },
    metrics: {},
  } as unknown as StepBatch;
  const m = stepMetrics(batch, {
    maxPromptTokens: 100,
    gpus: 8,
    epochsPerStep: 1,
    peakFlopsPerDevice: 989e12,
    flopShape: spec,
  });
  const flops = trainingFlops(spec, [400, 60]);
  assert.equal(m["perf/mfu/actor"], flops / (2 * 989e12 * 8));
  // A token passes through 8 of 128 experts: the count is far below 6 × all parameters.
  const perToken = forwardFlopsPerToken(spec);
  const all = parameterCounts(spec).total;
  assert.ok(3 * perToken < (6 * all) / 8, `${3 * perToken} vs ${6 * all}`);
  // Attention: 2 · s² · heads · (qk + v) · layers forward, three times in training (verl's 12 s² h d L).
  assert.equal(trainingFlops(spec, [400]) - 3 * perToken * 400, 12 * 400 ** 2 * 32 * 128 * 48);
  // No shape: no MFU.
  const none = stepMetrics(batch, {
    maxPromptTokens: 100,
    gpus: 8,
    epochsPerStep: 1,
    peakFlopsPerDevice: 989e12,
  });
  assert.equal(none["perf/mfu/actor"], undefined);
});

test("default peak FLOP/s by device name come from the GPU table (H20: 148 TFLOP/s, not an H100's)", () => {
  assert.equal(defaultPeakFlops("NVIDIA H20"), 148e12);
  assert.equal(defaultPeakFlops("NVIDIA H200"), 989e12);
  assert.equal(defaultPeakFlops("NVIDIA H100 80GB HBM3"), 989e12);
  assert.equal(defaultPeakFlops("NVIDIA B200"), 2250e12);
  assert.equal(defaultPeakFlops("NVIDIA A100-SXM4-80GB"), 312e12);
  assert.equal(defaultPeakFlops("cpu"), undefined);
});

test("tiller plan and tiller plan --search from the command line; a bad flag is named", () => {
  const cli = (...args: string[]) =>
    spawnSync(process.execPath, [join(repoRoot, "dist", "src", "cli", "main.js"), "plan", ...args], {
      encoding: "utf8",
    });
  const batch = [
    "--prompts",
    "128",
    "--samples",
    "8",
    "--prompt-tokens",
    "1024",
    "--response-tokens",
    "4096",
  ];
  // Qwen3-30B-A3B on 16 H20, the model and cluster every call but the --search ones plans.
  const h20 = ["--model", qwen30, "--gpu", "H20-96GB", "--gpus", "16"];
  const one = cli(...h20, "--ep", "8", "--rollout-tp", "4", ...batch);
  assert.equal(one.status, 0, one.stderr);
  assert.match(one.stdout, /memory per rank, GiB/);
  assert.match(one.stdout, /step time \(estimate\)/);
  const ranked = cli(
    "--model",
    qwen30,
    "--gpu",
    "H200-141GB",
    "--gpus",
    "8",
    "--search",
    "--top",
    "3",
    ...batch,
  );
  assert.equal(ranked.status, 0, ranked.stderr);
  assert.match(ranked.stdout, /1\. +\d+ s\/step/);
  assert.match(ranked.stdout, /3\. +\d+ s\/step/);
  const json = cli(...h20, "--json", ...batch);
  assert.equal(JSON.parse(json.stdout).model.architecture, "Qwen3MoeForCausalLM");
  const onCpu = cli(...h20, "--device", "cpu", "--json", ...batch);
  assert.equal(JSON.parse(onCpu.stdout).config.device, "cpu");
  const badDevice = cli(...h20, "--device", "tpu", ...batch);
  assert.equal(badDevice.status, 1);
  assert.match(badDevice.stderr, /device: "tpu"; allowed: "cuda", "cpu"/);
  const bad = cli(...h20, "--tp", "two", ...batch);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /--tp: "two" must be an integer ≥ 1/);
  const none = cli("--model", deepseek, "--gpu", "H20-96GB", "--gpus", "8", "--search", ...batch);
  assert.equal(none.status, 1);
  assert.match(none.stderr, /plan --search: .* per GPU short/);
});

test("the notebook view: one stacked bar per stage summing to its peak, the usable memory as a line, a row per stage", () => {
  const p = plan({
    model: qwen235,
    recipe: "qwen3-235b",
    gpu: "H20-96GB",
    gpus: 128,
    // The recipe keeps verl's 256-GPU split (5, 6 × 14, 5); on 128 H20 with ETP 1 its 14-layer
    // stages do not fit, the balanced 11, 6 × 12, 11 does.
    train: { expertTensor: 1, sequenceParallel: true, firstStageLayers: 11, lastStageLayers: 11 },
    rollout: { tensor: 8 },
    offload: "all",
  });
  const spec = planMemorySpec(p);
  const bars = spec.data.filter((t) => t.type === "bar");
  assert.ok(bars.some((t) => t.name === "optimizer") && bars.some((t) => t.name === "parameters"));
  p.stages.forEach((s, i) => {
    const stacked = bars.reduce((n, t) => n + (t.y[i] ?? 0), 0);
    assert.ok(Math.abs(stacked - s.peak.bytes / 2 ** 30) < 0.01 * bars.length, `stage ${i}: ${stacked}`);
  });
  const limit = spec.data.find((t) => t.type === "scatter");
  assert.equal(limit?.y[0], Number((p.cluster.usableBytesPerGpu / 2 ** 30).toFixed(2)));
  assert.equal(planRows(p).length, 8);
  const html = planHtml(p);
  assert.match(html, /128 × H20-96GB, train TP4 × EP4 × DP4 × PP8 \(SP\): fits/);
  assert.match(html, /step time/);
});
