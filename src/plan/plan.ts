// `plan(config)`: for a model, a cluster and an RL step, the memory of every pipeline stage's ranks
// by category and phase, what each group communicates, and an estimated step time with its parts.
// Static memory is exact (the engine's own accounting, memory.ts); activations, KV cache and times
// are estimates whose formulas and efficiency assumptions travel with the plan.
import {
  type Assumptions,
  type PlanBatch,
  type PlanConfig,
  type ResolvedPlanConfig,
  resolvePlanConfig,
} from "./config.js";
import { cpuLogprobBytes, cpuStageBytes, cpuWorkingBytes } from "./cpu-activations.js";
import { attentionForwardFlops, forwardFlopsPerToken } from "./flops.js";
import type { GpuType } from "./gpus.js";
import {
  engineSupport,
  type RolloutLayout,
  resolveRolloutLayout,
  resolveTrainLayout,
  type TrainLayout,
} from "./layout.js";
import {
  activationBytesPerToken,
  dtypeBytes,
  kvBytesPerToken,
  layerWorkingBytesPerToken,
  localElements,
  optimizerBytes,
  rolloutWeightBytes,
  type StaticMemory,
  stageStatic,
  sumKinds,
} from "./memory.js";
import { type ModelSpec, modelSpec, type ParameterCounts, parameterCounts } from "./model.js";
import { reshardBytes } from "./reshard.js";
import { type GroupTraffic, spansNodes, traffic } from "./traffic.js";

/** Bytes by category at one moment of the step. */
export type MemoryBreakdown = Record<string, number>;

export type Phase = "rollout" | "logprobs" | "update" | "optimizerStep";

export interface StagePlan {
  stage: number;
  /** [first, end) decoder layers. */
  layers: [number, number];
  /** Ranks of the stage (tensor × context × data); every one holds the amounts below. */
  ranks: number;
  static: StaticMemory;
  /** Estimated activation bytes of one micro-batch (all the stage's layers), micro-batches in flight (1F1B), and the total. */
  activations: { perMicroBatch: number; inFlight: number; total: number };
  /** Memory by category in each phase of the step. */
  phases: Record<Phase, MemoryBreakdown>;
  peak: { phase: Phase; bytes: number };
  /** Host memory per rank while the rollout runs (offloaded state). */
  hostBytes: number;
  /** The stage's communication per rank per step. */
  traffic: GroupTraffic[];
}

export interface RolloutPlan extends RolloutLayout {
  /** The rollout's own copy of the weights per rank; 0 when it reads the training weights in place. */
  weightBytes: number;
  inPlace: boolean;
  kvBytesPerToken: number;
  /** Sequences each rollout replica generates per step. */
  sequencesPerReplica: number;
  /** How many of them fit in the KV cache at once (each at prompt + response tokens). */
  concurrentSequences: number;
  /** KV cache of the concurrent sequences, and what the whole replica's batch would need at once. */
  kvCacheBytes: number;
  kvCacheForBatchBytes: number;
  traffic: GroupTraffic[];
}

export interface TimeEstimate {
  /** Seconds of each part of the step, in order; the step is their sum (no overlap assumed). */
  parts: { name: string; seconds: number; detail: string }[];
  totalSeconds: number;
  /** The update's model FLOPs ÷ (its estimated time × peak × GPUs): what perf/mfu/actor would read. */
  mfuActor: number;
}

export interface Plan {
  model: {
    architecture: string;
    parameters: ParameterCounts;
    layers: number;
    moe?: { experts: number; topK: number; layers: number };
    notes: string[];
  };
  cluster: { gpu: GpuType; gpus: number; nodes: number; usableBytesPerGpu: number };
  batch: PlanBatch & { sequences: number };
  train: TrainLayout & { describe: string; microBatchesPerMiniBatch: number; engine: string[] };
  rollout: RolloutPlan;
  stages: StagePlan[];
  /** The heaviest rank's peak over all stages and phases (the rollout's KV cache fills what training leaves, up to the batch). */
  worst: { stage: number; phase: Phase; bytes: number; headroomBytes: number };
  /** The peak of the training phases (logprobs, update, optimizer step) over all stages. */
  trainingPeak: { stage: number; phase: Phase; bytes: number };
  host: { perNodeBytes: number; fits?: boolean };
  /** Whether everything fits: the training peak, at least one sequence in the rollout's KV cache, the host. */
  fits: boolean;
  /** Bytes per GPU missing to fit (the training peak's excess, or what one rollout sequence lacks); 0 when it fits. */
  shortBytes: number;
  time: TimeEstimate;
  flops: { perStep: number; update: number };
  config: ResolvedPlanConfig;
  assumptions: Assumptions;
  notes: string[];
}

export function describeTrain(l: TrainLayout): string {
  const parts: string[] = [];
  const add = (name: string, n: number) => n > 1 && parts.push(`${name}${n}`);
  add("TP", l.tensor);
  add("CP", l.context);
  add("EP", l.expert);
  add("ETP", l.expertTensor);
  add("DP", l.data);
  add("PP", l.pipeline);
  return `${parts.join(" × ") || "one rank"}${l.sequenceParallel ? " (SP)" : ""}`;
}

/** The plan of `config` (see PlanConfig). Throws PlanConfigError / LayoutError naming the field. */
export function plan(config: PlanConfig): Plan {
  const c = resolvePlanConfig(config);
  return planFor(modelSpec(c.model), c);
}

/** Sequences of the same length: forward FLOPs. */
function forwardFlopsOf(spec: ModelSpec, sequences: number, tokens: number): number {
  return sequences * (forwardFlopsPerToken(spec) * tokens + attentionForwardFlops(spec, tokens));
}

/** The plan of a resolved config for a model already read (search calls this for every candidate). */
export function planFor(spec: ModelSpec, c: ResolvedPlanConfig): Plan {
  const { gpu, gpus, batch, assumptions: a } = c;
  const train = resolveTrainLayout(spec, gpus, c.train);
  const rollout = resolveRolloutLayout(spec, gpus, c.rollout);
  const b = dtypeBytes(c.dtype);
  const usable = gpu.memoryBytes - a.runtimeReserveBytes;
  const sequences = batch.promptsPerStep * batch.samplesPerPrompt;
  const seqMax = batch.promptTokens + batch.responseTokens;
  const seqMean = batch.promptTokens + batch.meanResponseTokens;
  const notes = [...spec.notes];
  const multiRank = gpus > 1;
  const staticOptions = { dtype: c.dtype, noDecay: c.noDecay, freezeVision: c.freezeVision, multiRank };

  // Micro-batches of one mini-batch on one data-parallel replica: by sequence counts at the
  // longest lengths for memory, by packed tokens at the mean lengths for time.
  const perReplica = sequences / batch.miniBatchesPerStep / train.data;
  if (perReplica < 1) {
    notes.push(
      `a mini-batch has ${sequences / batch.miniBatchesPerStep} sequences for ${train.data} data-parallel replicas: some replicas idle`,
    );
  }
  const replicaSequences = Math.max(1, Math.ceil(perReplica));
  const perMicro = Math.max(1, Math.floor(batch.tokensPerMicroBatch / seqMax));
  const microBatchesMemory = Math.ceil(replicaSequences / perMicro);
  const microBatches = Math.max(1, Math.ceil((replicaSequences * seqMean) / batch.tokensPerMicroBatch));
  const microTokens = Math.min(batch.tokensPerMicroBatch, replicaSequences * seqMax);
  const rankTokens = microTokens / train.context;
  // Rows whose next token is predicted (all but each sequence's last), per context rank.
  const rankRows = (microTokens - Math.min(perMicro, replicaSequences)) / train.context;
  // For traffic and time: a micro-batch's tokens at the mean lengths.
  const trafficTokens = (replicaSequences * seqMean) / microBatches / train.context;

  // The rollout: its copy of the weights (none when it reads the training weights in place),
  // the KV cache at the concurrency that fits next to what training keeps on the GPU.
  const inPlace =
    train.pipeline === 1 &&
    train.context === 1 &&
    train.expert === 1 &&
    train.expertTensor === 1 &&
    train.tensor === rollout.tensor &&
    !rollout.expert;
  const offloadParameters = c.offload.parameters && !inPlace;
  if (c.offload.parameters && inPlace) {
    notes.push(
      "offload.parameters: the rollout reads the training weights in place, so they stay on the GPU",
    );
  }
  const rolloutWeights = inPlace ? 0 : rolloutWeightBytes(spec, rollout, c.dtype);
  const kvPerToken = kvBytesPerToken(spec, rollout.tensor, c.dtype);
  const sequencesPerReplica = Math.ceil(sequences / rollout.data);
  const samplingLogitsPerSequence = (spec.vocab / rollout.tensor) * 4;

  const statics = train.stages.map((_, s) => stageStatic(spec, train, s, staticOptions));
  const paramBytes = (m: StaticMemory) => sumKinds(m.parameters);
  const rolloutResident = (m: StaticMemory) =>
    (offloadParameters ? 0 : paramBytes(m) * (c.reference ? 2 : 1)) +
    m.buffers +
    (c.offload.optimizer ? 0 : optimizerBytes(m.optimizer));
  const kvRoom = usable - Math.max(...statics.map(rolloutResident)) - rolloutWeights;
  const perSequence = kvPerToken * seqMax + samplingLogitsPerSequence;
  const concurrent = Math.max(0, Math.min(sequencesPerReplica, Math.floor(kvRoom / perSequence)));

  const lastStage = train.stages.length - 1;
  const chunk = c.logprobChunkTokens;
  const cpu = c.device === "cpu";
  // The fused logprob kernel keeps one chunk of logits in the activation dtype (its backward
  // recomputes the softmax from them): 1.8 B per bf16 logit measured on an H200 (bench/memory.ts).
  // The CPU's pass keeps the micro-batch's logits whole (cpu-activations.ts).
  const logprobChunk = cpu
    ? cpuLogprobBytes(spec, train, c.dtype, rankRows, chunk)
    : chunk * (spec.vocab / train.tensor) * b;
  // A forward without backward (old and reference logprobs) holds one chunk's logits on either.
  const forwardLogprobChunk = Math.min(chunk, rankRows) * (spec.vocab / train.tensor) * b;
  const stages: StagePlan[] = train.stages.map((layers, s) => {
    const m = statics[s] as StaticMemory;
    let perMicroBatch = cpu ? cpuStageBytes(spec, train, s, c.dtype, rankTokens, rankRows) : 0;
    let working = 0;
    for (let l = layers[0]; l < layers[1]; l++) {
      perMicroBatch += activationBytesPerToken(spec, train, l, c.dtype, c.recompute, c.device) * rankTokens;
      working = Math.max(working, layerWorkingBytesPerToken(spec, train, l, c.dtype, c.device) * rankTokens);
    }
    const inFlight = train.pipeline > 1 ? Math.min(train.pipeline - s, microBatchesMemory) : 1;
    const hasHead = s === lastStage;
    // CPU: one layer's temporaries beside every saved activation, where larger than the logprob pass.
    const transient = cpu
      ? Math.max(
          0,
          cpuWorkingBytes(spec, train, s, c.dtype, rankTokens, rankRows) - (hasHead ? logprobChunk : 0),
        )
      : 0;
    const activations = {
      perMicroBatch,
      inFlight,
      total: perMicroBatch * inFlight + (c.recompute === "full" ? working : 0) + transient,
    };
    const params = paramBytes(m);
    const optimizer = optimizerBytes(m.optimizer);
    const reference = c.reference ? params : 0;
    const phases: Record<Phase, MemoryBreakdown> = {
      rollout: {
        parameters: offloadParameters ? 0 : params,
        reference: offloadParameters ? 0 : reference,
        buffers: m.buffers,
        optimizer: c.offload.optimizer ? 0 : optimizer,
        rolloutWeights,
        kvCache: concurrent * kvPerToken * seqMax,
        samplingLogits: concurrent * samplingLogitsPerSequence,
      },
      logprobs: {
        parameters: params,
        reference,
        buffers: m.buffers,
        optimizer: c.offload.optimizer ? 0 : optimizer,
        activations: working,
        logprobChunk: hasHead ? (cpu ? forwardLogprobChunk : logprobChunk) : 0,
      },
      update: {
        parameters: params,
        reference,
        buffers: m.buffers,
        gradients: m.gradients,
        optimizer,
        activations: activations.total,
        logprobChunk: hasHead ? logprobChunk : 0,
      },
      optimizerStep: {
        parameters: params,
        reference,
        buffers: m.buffers,
        gradients: m.gradients,
        optimizer,
        optimizerStepTransient: m.optimizerStepTransient,
      },
    };
    let peak: { phase: Phase; bytes: number } = { phase: "rollout", bytes: -1 };
    for (const [phase, breakdown] of Object.entries(phases) as [Phase, MemoryBreakdown][]) {
      const bytes = Object.values(breakdown).reduce((x, y) => x + y, 0);
      if (bytes > peak.bytes) peak = { phase, bytes };
    }
    return {
      stage: s,
      layers,
      ranks: train.tensor * train.context * train.data,
      static: m,
      activations,
      phases,
      peak,
      hostBytes: (offloadParameters ? params + reference : 0) + (c.offload.optimizer ? optimizer : 0),
      traffic: stageTraffic(spec, c, train, s, trafficTokens, microBatches, m),
    };
  });

  const worstStage = stages.reduce((w, s) => (s.peak.bytes > w.peak.bytes ? s : w));
  // The training phases' peak (the rollout's KV cache fills what is left, up to the batch).
  let trainPeak = { stage: 0, phase: "update" as Phase, bytes: -1 };
  for (const s of stages) {
    for (const phase of ["logprobs", "update", "optimizerStep"] as const) {
      const bytes = Object.values(s.phases[phase]).reduce((x, y) => x + y, 0);
      if (bytes > trainPeak.bytes) trainPeak = { stage: s.stage, phase, bytes };
    }
  }
  const trainFits = trainPeak.bytes <= usable;
  const rolloutFits = concurrent >= 1;
  if (!rolloutFits) {
    notes.push(
      `the rollout cannot hold one sequence: ${fmt(perSequence)} of KV cache per sequence, ${fmt(Math.max(0, kvRoom))} left per GPU`,
    );
  }
  // Host memory of the busiest node: its ranks' offloaded state (ranks are numbered node by node).
  const stageRanks = train.tensor * train.context * train.data;
  let perNode = 0;
  for (let node = 0; node * gpu.gpusPerNode < gpus; node++) {
    let bytes = 0;
    for (let r = node * gpu.gpusPerNode; r < Math.min(gpus, (node + 1) * gpu.gpusPerNode); r++) {
      bytes += (stages[Math.floor(r / stageRanks)] as StagePlan).hostBytes;
    }
    perNode = Math.max(perNode, bytes);
  }
  const hostFits =
    gpu.hostMemoryBytesPerNode === undefined ? undefined : perNode <= gpu.hostMemoryBytesPerNode;

  const rolloutPlan: RolloutPlan = {
    ...rollout,
    weightBytes: rolloutWeights,
    inPlace,
    kvBytesPerToken: kvPerToken,
    sequencesPerReplica,
    concurrentSequences: concurrent,
    kvCacheBytes: concurrent * kvPerToken * seqMax,
    kvCacheForBatchBytes: sequencesPerReplica * kvPerToken * seqMax,
    traffic: [],
  };
  const time = estimateTime(spec, c, train, rolloutPlan, stages, microBatches, sequences, seqMean, inPlace);
  rolloutPlan.traffic = time.rolloutTraffic;
  const updateFlops = batch.epochsPerStep * 3 * forwardFlopsOf(spec, sequences, seqMean);
  const passes = (c.oldLogprobs ? 1 : 0) + (c.reference ? 1 : 0);
  const engine = engineSupport(spec, train);
  if (c.dtype === "float32") notes.push("times assume the GPU type's bf16 matmul peak; float32 runs slower");
  if (cpu) {
    notes.push(
      `device cpu: activations and the logprob pass follow the CPU engine's kernels${c.dtype === "float32" ? "" : " (measured in float32 only)"}; memory capacity and times are the ${gpu.name}'s`,
    );
  }
  if (engine.length > 0) notes.push(`the engine does not run this training layout yet: ${engine.join("; ")}`);
  if (spec.moe && train.tensor > 1 && !train.sequenceParallel) {
    notes.push(
      "Megatron requires sequence parallelism for MoE models under tensor parallelism (train.sequenceParallel)",
    );
  }
  if (spec.moe && train.expertData === 1 && train.expert > 1) {
    notes.push(
      `expert state is not sharded: expert-data parallelism is 1 (${train.expert} expert ranks × expertTensor ${train.expertTensor} = tensor × context × data), so each rank keeps full fp32 masters and moments of its experts`,
    );
  }
  return {
    model: {
      architecture: spec.architecture,
      parameters: parameterCounts(spec),
      layers: spec.layers,
      ...(spec.moe
        ? { moe: { experts: spec.moe.experts, topK: spec.moe.topK, layers: spec.moe.layers.length } }
        : {}),
      notes: spec.notes,
    },
    cluster: { gpu, gpus, nodes: Math.ceil(gpus / gpu.gpusPerNode), usableBytesPerGpu: usable },
    batch: { ...batch, sequences },
    train: { ...train, describe: describeTrain(train), microBatchesPerMiniBatch: microBatches, engine },
    rollout: rolloutPlan,
    stages,
    worst: {
      stage: worstStage.stage,
      phase: worstStage.peak.phase,
      bytes: worstStage.peak.bytes,
      headroomBytes: usable - worstStage.peak.bytes,
    },
    host: { perNodeBytes: perNode, ...(hostFits === undefined ? {} : { fits: hostFits }) },
    fits: trainFits && rolloutFits && hostFits !== false,
    trainingPeak: trainPeak,
    shortBytes: Math.max(0, trainPeak.bytes - usable, rolloutFits ? 0 : perSequence - kvRoom),
    time: time.estimate,
    flops: { perStep: updateFlops + passes * forwardFlopsOf(spec, sequences, seqMean), update: updateFlops },
    config: c,
    assumptions: a,
    notes,
  };
}

/** Bytes in binary units (GiB as nvidia-smi's and torch's memory figures). */
export const fmt = (bytes: number): string =>
  bytes >= 2 ** 40
    ? `${(bytes / 2 ** 40).toFixed(2)} TiB`
    : bytes >= 2 ** 30
      ? `${(bytes / 2 ** 30).toFixed(1)} GiB`
      : `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/**
 * One training stage's communication per rank per step: the tensor (or sequence-parallel),
 * expert, context and pipeline groups per micro-batch and layer, the data groups per optimizer step.
 */
function stageTraffic(
  spec: ModelSpec,
  c: ResolvedPlanConfig,
  l: TrainLayout,
  stage: number,
  rankTokens: number,
  microBatches: number,
  m: StaticMemory,
): GroupTraffic[] {
  const { gpu, batch, assumptions: a } = c;
  const b = dtypeBytes(c.dtype);
  const gpn = gpu.gpusPerNode;
  const out: GroupTraffic[] = [];
  const [begin, end] = l.stages[stage] as [number, number];
  const layers = end - begin;
  const moeLayers = spec.moe ? spec.moe.layers.filter((x) => x >= begin && x < end).length : 0;
  // Forward passes per step (old logprobs, reference, each epoch's update, a recompute's second
  // forward) and backward passes, each over every micro-batch of every mini-batch.
  const micro = microBatches * batch.miniBatchesPerStep;
  const forwards =
    micro *
    ((c.oldLogprobs ? 1 : 0) +
      (c.reference ? 1 : 0) +
      batch.epochsPerStep * (c.recompute === "full" ? 2 : 1));
  const backwards = micro * batch.epochsPerStep;
  const hidden = rankTokens * spec.hidden * b;
  if (l.tensor > 1) {
    // Attention and MLP outputs (MoE layers: attention only, the experts use the expert groups).
    const perPass = 2 * layers - moeLayers;
    const acrossNodes = spansNodes(l.tensor, 1, gpn);
    if (l.sequenceParallel) {
      for (const collective of ["allGather", "reduceScatter"] as const) {
        out.push(
          traffic(
            {
              group: "sequence",
              collective,
              ranks: l.tensor,
              acrossNodes,
              calls: perPass * (forwards + backwards),
              payloadBytes: perPass * (forwards + backwards) * hidden,
              what: "token shards around each tensor-parallel region, forward and backward",
            },
            gpu,
            a,
          ),
        );
      }
    } else {
      out.push(
        traffic(
          {
            group: "tensor",
            collective: "allReduce",
            ranks: l.tensor,
            acrossNodes,
            calls: perPass * (forwards + backwards),
            payloadBytes: perPass * (forwards + backwards) * hidden,
            what: "attention and MLP outputs (forward), their input gradients (backward)",
          },
          gpu,
          a,
        ),
      );
    }
  }
  if (l.expert > 1 && moeLayers > 0 && spec.moe) {
    const tokens = rankTokens / (l.sequenceParallel ? l.tensor : 1);
    const rows = tokens * spec.moe.topK * spec.hidden * b;
    const calls = 2 * moeLayers * (forwards + backwards);
    out.push(
      traffic(
        {
          group: "expert",
          collective: "allToAll",
          ranks: l.expert,
          acrossNodes: spansNodes(l.expert, l.expertTensor, gpn),
          calls,
          payloadBytes: calls * rows,
          what: "token dispatch to the experts and the combine back, forward and backward",
        },
        gpu,
        a,
      ),
    );
  }
  if (l.expertTensor > 1 && moeLayers > 0 && spec.moe) {
    // The dispatched rows gathered over the expert-tensor group before the experts, reduce-scattered after.
    const tokens = rankTokens / (l.sequenceParallel ? l.tensor : 1);
    const gathered = tokens * spec.moe.topK * spec.hidden * b * l.expertTensor;
    const calls = moeLayers * (forwards + backwards);
    for (const collective of ["allGather", "reduceScatter"] as const) {
      out.push(
        traffic(
          {
            group: "expertTensor",
            collective,
            ranks: l.expertTensor,
            acrossNodes: spansNodes(l.expertTensor, 1, gpn),
            calls,
            payloadBytes: calls * gathered,
            what: "dispatched tokens shared by the ranks that split each expert",
          },
          gpu,
          a,
        ),
      );
    }
  }
  if (l.context > 1) {
    const att = spec.attention;
    const kv =
      att.kind === "gqa"
        ? 2 * (att.kvHeads >= l.tensor ? att.kvHeads / l.tensor : 1) * att.headDim
        : (att.heads / l.tensor) * (att.qkNopeDim + att.qkRopeDim + att.vDim);
    const full = rankTokens * l.context * kv * b;
    out.push(
      traffic(
        {
          group: "context",
          collective: "allGather",
          ranks: l.context,
          acrossNodes: spansNodes(l.context, l.tensor, gpn),
          calls: layers * (forwards + backwards),
          payloadBytes: layers * (forwards + backwards) * full,
          what: "keys and values of the whole sequence (backward: reduce-scatter of their gradients)",
        },
        gpu,
        a,
      ),
    );
  }
  if (l.pipeline > 1) {
    const act = (rankTokens * spec.hidden * b) / (l.sequenceParallel ? l.tensor : 1);
    const boundaries = (stage > 0 ? 1 : 0) + (stage < l.pipeline - 1 ? 1 : 0);
    const calls = boundaries * (forwards + backwards);
    out.push(
      traffic(
        {
          group: "pipeline",
          collective: "sendRecv",
          ranks: 2,
          acrossNodes: l.tensor * l.context * l.data >= gpn,
          calls,
          payloadBytes: calls * act,
          what: "activations to the next stage (forward), their gradients back (backward)",
        },
        gpu,
        a,
      ),
    );
  }
  // ZeRO-1 per optimizer update: reduce-scatter of the fp32 gradient buffer, all-gather of the parameters.
  const updates = batch.miniBatchesPerStep * batch.epochsPerStep;
  for (const expert of [false, true]) {
    const groups = m.optimizer.groups.filter((g) => g.expert === expert);
    const padded = groups.reduce((s, g) => s + g.padded, 0);
    const ranks = expert ? l.expertData : l.data * l.context;
    if (padded === 0 || ranks === 1) continue;
    const stride = expert ? l.expert * l.expertTensor : l.tensor;
    const acrossNodes = spansNodes(ranks, stride, gpn);
    const name = expert ? "expertData" : "data";
    out.push(
      traffic(
        {
          group: name,
          collective: "reduceScatter",
          ranks,
          acrossNodes,
          calls: updates * groups.length,
          payloadBytes: updates * padded * 4,
          what: `fp32 gradients of the ${expert ? "experts" : "dense parameters"}, one flat buffer per ZeRO group`,
        },
        gpu,
        a,
      ),
      traffic(
        {
          group: name,
          collective: "allGather",
          ranks,
          acrossNodes,
          calls: updates * groups.length,
          payloadBytes: updates * padded * b,
          what: `updated ${expert ? "expert" : "dense"} parameters`,
        },
        gpu,
        a,
      ),
    );
  }
  return out;
}

function estimateTime(
  spec: ModelSpec,
  c: ResolvedPlanConfig,
  train: TrainLayout,
  rollout: RolloutPlan,
  stages: StagePlan[],
  microBatches: number,
  sequences: number,
  seqMean: number,
  inPlace: boolean,
): { estimate: TimeEstimate; rolloutTraffic: GroupTraffic[] } {
  const { gpu, gpus, batch, assumptions: a } = c;
  const b = dtypeBytes(c.dtype);
  const peak = gpu.bf16FlopsPerSecond;
  const parts: TimeEstimate["parts"] = [];
  const rolloutTraffic: GroupTraffic[] = [];

  // Rollout: prefill by FLOPs; each decode step reads the rank's weights (the experts its batch
  // touches) and the KV cache from HBM, or is bound by FLOPs, whichever is slower; tensor ranks
  // all-reduce the attention and MLP outputs of every layer.
  const tr = rollout.tensor;
  const concurrent = Math.max(1, rollout.concurrentSequences);
  const perToken = forwardFlopsPerToken(spec);
  const waves = Math.ceil(rollout.sequencesPerReplica / concurrent);
  const prefillFlops =
    rollout.sequencesPerReplica *
    (perToken * batch.promptTokens + attentionForwardFlops(spec, batch.promptTokens));
  const prefillS = prefillFlops / tr / (peak * a.prefillComputeEfficiency);
  // Continuous batching: the replica's response tokens over the concurrent slots, at least the longest response.
  const decodeSteps = Math.max(
    batch.responseTokens,
    Math.ceil((rollout.sequencesPerReplica * batch.meanResponseTokens) / concurrent),
  );
  // Bytes a decode step reads per rank: every weight but the embedding (only the batch's rows) and
  // the vision tower (prefill only), the experts in the share the batch's tokens touch.
  let denseBytes = 0;
  let expertBytes = 0;
  for (const t of spec.tensors) {
    if (t.kind === "vision" || (t.name === "model.embed_tokens.weight" && !spec.tied)) continue;
    const bytes = localElements(t, tr, t.split === "expert" ? tr : 1, 1) * (t.buffer ? 4 : b);
    if (t.kind === "expert") expertBytes += bytes;
    else denseBytes += bytes;
  }
  const touched = spec.moe ? 1 - (1 - spec.moe.topK / spec.moe.experts) ** concurrent : 1;
  const context = batch.promptTokens + batch.meanResponseTokens / 2;
  const kvRead = concurrent * context * rollout.kvBytesPerToken;
  const readS = (denseBytes + expertBytes * touched + kvRead) / (gpu.hbmBytesPerSecond * a.hbmEfficiency);
  const stepFlops = concurrent * (perToken + attentionForwardFlops(spec, context) / context);
  const flopsS = stepFlops / tr / (peak * a.prefillComputeEfficiency);
  const rolloutAcross = spansNodes(tr, 1, gpu.gpusPerNode);
  const decodeComm = traffic(
    {
      group: "rolloutTensor",
      collective: "allReduce",
      ranks: tr,
      acrossNodes: rolloutAcross,
      calls: 2 * spec.layers * decodeSteps,
      payloadBytes: 2 * spec.layers * decodeSteps * concurrent * spec.hidden * b,
      what: "attention and MLP outputs of every decode step",
    },
    gpu,
    a,
  );
  const prefillComm = traffic(
    {
      group: "rolloutTensor",
      collective: "allReduce",
      ranks: tr,
      acrossNodes: rolloutAcross,
      calls: 2 * spec.layers * waves,
      payloadBytes: 2 * spec.layers * rollout.sequencesPerReplica * batch.promptTokens * spec.hidden * b,
      what: "attention and MLP outputs of the prefill",
    },
    gpu,
    a,
  );
  if (tr > 1) rolloutTraffic.push(prefillComm, decodeComm);
  const stepS = Math.max(readS, flopsS);
  parts.push({
    name: "rollout",
    seconds: prefillS + decodeSteps * stepS + decodeComm.seconds + prefillComm.seconds,
    detail:
      `${rollout.sequencesPerReplica} sequences per replica, ${Math.min(concurrent, rollout.sequencesPerReplica)} at once (${waves} wave${waves > 1 ? "s" : ""}); ` +
      `prefill ${prefillS.toFixed(1)} s; ${decodeSteps} decode steps × ${(stepS * 1e3).toFixed(1)} ms (${readS >= flopsS ? "HBM-bound" : "FLOP-bound"}: ${fmt(denseBytes + expertBytes * touched + kvRead)} read per step) ` +
      `+ tensor all-reduces ${(decodeComm.seconds + prefillComm.seconds).toFixed(1)} s`,
  });
  const reshard = inPlace ? 0 : reshardBytes(spec, train, rollout, b);
  if (!inPlace) {
    const across = gpus > gpu.gpusPerNode;
    const entry = traffic(
      {
        group: "reshard",
        collective: "sendRecv",
        ranks: gpus,
        acrossNodes: across,
        calls: 1,
        payloadBytes: reshard,
        what: "training slices to rollout slices (each region a rank lacks arrives once)",
      },
      gpu,
      a,
    );
    rolloutTraffic.push(entry);
    parts.push({ name: "reshard", seconds: entry.seconds, detail: `${fmt(reshard)} into the busiest rank` });
  }
  const host = Math.max(...stages.map((s) => s.hostBytes));
  if (host > 0) {
    parts.push({
      name: "offload",
      seconds: (2 * host) / (gpu.pcieBytesPerSecond * a.pcieEfficiency),
      detail: `${fmt(host)} to the host and back per rank`,
    });
  }
  // Training passes: model FLOPs over all GPUs at the assumed efficiency, the pipeline bubble,
  // and the slowest stage's communication.
  const bubble = train.pipeline > 1 ? (train.pipeline - 1) / microBatches : 0;
  const forward = forwardFlopsOf(spec, sequences, seqMean);
  const computeS = (flops: number) => (flops / gpus / (peak * a.trainComputeEfficiency)) * (1 + bubble);
  const slowest = stages.reduce(
    (w, s) => {
      const t = s.traffic.reduce((x, e) => x + e.seconds, 0);
      return t > w.t ? { t, s } : w;
    },
    { t: -1, s: stages[0] as StagePlan },
  ).s;
  const commBy = (f: (e: GroupTraffic) => boolean) =>
    slowest.traffic.filter(f).reduce((x, e) => x + e.seconds, 0);
  const zero = commBy((e) => e.group === "data" || e.group === "expertData");
  const passComm = commBy((e) => e.group !== "data" && e.group !== "expertData");
  const forwardPasses = (c.oldLogprobs ? 1 : 0) + (c.reference ? 1 : 0);
  const updateForwards = batch.epochsPerStep * (c.recompute === "full" ? 2 : 1);
  // Forward and backward passes move the same bytes; the stage's traffic sums all of them.
  const totalPasses = forwardPasses + updateForwards + batch.epochsPerStep;
  const passCommShare = (n: number) => (passComm * n) / totalPasses;
  if (c.oldLogprobs) {
    parts.push({
      name: "old logprobs",
      seconds: computeS(forward) + passCommShare(1),
      detail: "one forward of the batch",
    });
  }
  if (c.reference) {
    parts.push({
      name: "reference",
      seconds: computeS(forward) + passCommShare(1),
      detail: "one forward of the batch under the reference",
    });
  }
  const updateCompute = computeS(batch.epochsPerStep * (3 + (c.recompute === "full" ? 1 : 0)) * forward);
  const updateComm = passCommShare(updateForwards + batch.epochsPerStep) + zero;
  const updateS = updateCompute + updateComm;
  parts.push({
    name: "update",
    seconds: updateS,
    detail:
      `${microBatches} micro-batch${microBatches > 1 ? "es" : ""} per mini-batch per replica` +
      (bubble > 0 ? `, pipeline bubble ${(100 * bubble).toFixed(0)}%` : "") +
      (c.recompute === "full" ? ", full recompute (one more forward)" : "") +
      `; communication ${updateComm.toFixed(1)} s (ZeRO ${zero.toFixed(1)} s)`,
  });
  const totalSeconds = parts.reduce((s, p) => s + p.seconds, 0);
  const updateFlops = batch.epochsPerStep * 3 * forward;
  return {
    estimate: { parts, totalSeconds, mfuActor: updateFlops / (updateS * peak * gpus) },
    rolloutTraffic,
  };
}
