// The planner against what the engine holds, on CPU worker processes over gloo, for the layouts the
// multi-rank tests run. Static memory must be exact: per rank, the bytes of its parameter slices by
// kind and of its gradients equal the plan's, and so do the ZeRO-1 buffers — measured from the
// mesh's byte counters over one optimizer step (the reduce-scatter of each group's padded fp32
// gradient buffer and the all-gather of its parameters), which give the padded group sizes and so
// each rank's shard of masters and moments. Activations must be within ±10%: each rank's measured
// peak of a 4 × 96-token micro-batch (the CPU allocator's, as the worker reports
// perf/memory/activations_peak_bytes) against its stage's planned update activations plus the
// logprob pass, planned with `device: "cpu"` (the CPU kernels' model, src/plan/cpu-activations.ts).
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import type { Layout } from "../../src/index.js";
import { type Plan, plan } from "../../src/plan/index.js";
import { writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";
import { freePort, runRanks } from "../helpers/ranks.js";
import { type TinyDenseShape, writeTinyDense } from "../helpers/tiny-models.js";
import type { MeasuredRank, PlanRankConfig } from "./plan-rank.js";

interface Case {
  label: string;
  layout: Layout;
  world: number;
  model: { dense: TinyDenseShape } | { moe: { experts: number; topK: number } };
}

/** The micro-batch whose activation peak every rank measures: large enough that activations dominate the allocator's small change. */
const measuredBatch = { sequences: 4, length: 96 };
const tolerance = 0.1;

const cases: Case[] = [
  {
    label: "TP2 × DP2",
    layout: { tensor: 2, data: 2 },
    world: 4,
    model: { dense: { family: "qwen3", heads: 4, kvHeads: 2 } },
  },
  {
    label: "TP2 + SP",
    layout: { tensor: 2, sequenceParallel: true },
    world: 2,
    model: { dense: { family: "qwen3", heads: 4, kvHeads: 2 } },
  },
  {
    label: "TP2 + SP, 1 KV head (replicated), biases",
    layout: { tensor: 2, sequenceParallel: true },
    world: 2,
    model: { dense: { family: "qwen2", heads: 4, kvHeads: 1 } },
  },
  { label: "EP2", layout: { expert: 2, data: 2 }, world: 2, model: { moe: { experts: 4, topK: 2 } } },
  { label: "EP2 × EDP2", layout: { expert: 2, data: 4 }, world: 4, model: { moe: { experts: 4, topK: 2 } } },
  { label: "EP4", layout: { expert: 4, data: 4 }, world: 4, model: { moe: { experts: 4, topK: 2 } } },
  {
    label: "PP2 × TP2",
    layout: { pipeline: 2, tensor: 2 },
    world: 4,
    model: { dense: { family: "qwen3", heads: 4, kvHeads: 2, layers: 4 } },
  },
  {
    label: "PP2, tied embedding (first and last stage)",
    layout: { pipeline: 2 },
    world: 2,
    model: { dense: { family: "qwen3", heads: 4, kvHeads: 2, layers: 4, tied: true } },
  },
];

function planOf(dir: string, c: Case): Plan {
  const replicas = c.world / ((c.layout.tensor ?? 1) * (c.layout.pipeline ?? 1));
  const { sequences, length } = measuredBatch;
  return plan({
    model: dir,
    gpu: "H100-80GB",
    device: "cpu",
    gpus: c.world,
    train: {
      tensor: c.layout.tensor ?? 1,
      pipeline: c.layout.pipeline ?? 1,
      expert: c.layout.expert ?? 1,
      sequenceParallel: c.layout.sequenceParallel ?? false,
    },
    rollout: { tensor: c.layout.tensor ?? 1 },
    dtype: "float32",
    // Each data-parallel replica's micro-batch is the measured one.
    batch: {
      promptsPerStep: sequences * replicas,
      samplesPerPrompt: 1,
      promptTokens: length / 2,
      responseTokens: length / 2,
      tokensPerMicroBatch: sequences * length,
    },
  });
}

for (const c of cases) {
  test(`planned memory per rank against the engine's at ${c.label}: parameters by kind, gradients, ZeRO-1 buffers exact, activations ±10%`, {
    timeout: 180_000,
  }, async () => {
    const dir = tempDir("plan-measured");
    try {
      const modelDir = join(dir.path, "model");
      const config =
        "dense" in c.model
          ? await writeTinyDense(modelDir, c.model.dense)
          : await writeTinyModel(modelDir, { seed: 4, moe: c.model.moe, hiddenSize: 32 });
      const vocab = config.vocab_size as number;
      const port = await freePort();
      const moe =
        "moe" in c.model ? { ...c.model.moe, layers: config.num_hidden_layers as number } : undefined;
      const configs: PlanRankConfig[] = Array.from({ length: c.world }, (_, rank) => ({
        port,
        rank,
        worldSize: c.world,
        layout: c.layout,
        modelDir,
        vocab,
        activations: measuredBatch,
        ...(moe ? { moe } : {}),
      }));
      const ranks = (await runRanks(
        configs,
        150_000,
        {},
        "../plan/plan-rank.js",
      )) as unknown as MeasuredRank[];
      for (const r of ranks) assert.equal(r.ok, true, `rank ${r.rank}: ${r.error}`);

      const p = planOf(modelDir, c);
      assert.equal(p.stages.length, c.layout.pipeline ?? 1);
      const dataRanks = p.train.data * p.train.context;
      for (const r of ranks) {
        // Each rank against its own pipeline stage's plan.
        const stage = p.stages[r.stage];
        assert.ok(stage, `rank ${r.rank}: stage ${r.stage} planned`);
        const planned = stage.static;
        const zero = (group: "data" | "expertData", collective: string) =>
          stage.traffic.find((e) => e.group === group && e.collective === collective)?.payloadBytes;
        const at = `${c.label}, rank ${r.rank}`;
        const update = stage.phases.update;
        const plannedActivations = (update.activations ?? 0) + (update.logprobChunk ?? 0);
        const ratio = r.activationsPeak / plannedActivations;
        assert.ok(
          Math.abs(ratio - 1) <= tolerance,
          `${at}: activation peak ${r.activationsPeak} B measured, ${plannedActivations} B planned (stage ${r.stage}: activations ${update.activations} + logprob pass ${update.logprobChunk}); ratio ${ratio.toFixed(3)}, allowed 1 ± ${tolerance}`,
        );
        assert.deepEqual(r.parameters, planned.parameters, `${at}: parameter bytes by kind`);
        assert.equal(r.gradients, planned.gradients, `${at}: gradient bytes`);
        // Dense ZeRO groups over data × context: the padded buffers and this rank's shard.
        const dense = r.zero.data_context;
        if (dataRanks > 1) {
          assert.ok(dense, `${at}: no traffic on the data group`);
          assert.equal(
            dense.reduceScatter?.bytes,
            zero("data", "reduceScatter"),
            `${at}: dense reduce-scatter bytes`,
          );
          assert.equal(dense.allGather?.bytes, zero("data", "allGather"), `${at}: dense all-gather bytes`);
          assert.equal(
            (dense.reduceScatter?.bytes ?? 0) / 4 / dataRanks,
            planned.optimizer.shardElements.dense,
            `${at}: dense optimizer shard elements`,
          );
        }
        // Expert groups over expert-data; with one expert-data rank the state is not sharded at all.
        const expert = r.zero.expert_data;
        if (p.train.expertData > 1) {
          assert.ok(expert, `${at}: no traffic on the expert-data group`);
          assert.equal(
            expert.reduceScatter?.bytes,
            zero("expertData", "reduceScatter"),
            `${at}: expert reduce-scatter bytes`,
          );
          assert.equal(
            expert.allGather?.bytes,
            zero("expertData", "allGather"),
            `${at}: expert all-gather bytes`,
          );
          assert.equal(
            (expert.reduceScatter?.bytes ?? 0) / 4 / p.train.expertData,
            planned.optimizer.shardElements.expert,
            `${at}: expert optimizer shard elements`,
          );
        } else {
          assert.equal(expert, undefined, `${at}: an expert-data group of one rank moves nothing`);
          assert.equal(
            planned.optimizer.shardElements.expert * 4,
            r.parameters.expert,
            `${at}: unsharded expert state`,
          );
        }
      }
      for (const [s, stage] of p.stages.entries()) {
        const planned = stage.static;
        const o = planned.optimizer;
        const update = stage.phases.update;
        const plannedActivations = (update.activations ?? 0) + (update.logprobChunk ?? 0);
        const measured = ranks.filter((r) => r.stage === s).map((r) => r.activationsPeak);
        console.log(
          `${c.label}, stage ${s}: per rank parameters ${JSON.stringify(planned.parameters)} B, gradients ${planned.gradients} B, ` +
            `optimizer shard ${o.shardElements.dense} dense + ${o.shardElements.expert} expert elements ` +
            `(${o.masters + o.moments + o.normMask} B) — planned = measured on all ${c.world} ranks; ` +
            `activation peak planned ${plannedActivations} B, measured ${measured.join(", ")} B ` +
            `(${measured.map((m) => (m / plannedActivations).toFixed(3)).join(", ")}×)`,
        );
      }
    } finally {
      dir.cleanup();
    }
  });
}
