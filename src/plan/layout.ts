// Training and rollout layouts for a model on a number of GPUs: sizes checked against the model's
// shape (errors name the field, the value and what is allowed), the derived data and expert-data
// sizes (Megatron's folding: experts over expert × expertTensor × expertData = tensor × context ×
// data within a stage), and the layers of each pipeline stage.
import type { ModelSpec } from "./model.js";

export interface TrainLayoutInput {
  tensor?: number;
  context?: number;
  pipeline?: number;
  expert?: number;
  /** Tensor parallelism inside each expert (Megatron's expert_tensor_parallel_size). Default 1. */
  expertTensor?: number;
  sequenceParallel?: boolean;
  /** Decoder layers of the first / last pipeline stage (Megatron's num_layers_in_first/last_pipeline_stage). */
  firstStageLayers?: number;
  lastStageLayers?: number;
}

export interface TrainLayout {
  tensor: number;
  context: number;
  pipeline: number;
  expert: number;
  expertTensor: number;
  /** GPUs / (tensor × context × pipeline). */
  data: number;
  /** tensor × context × data / (expert × expertTensor): the replicas of each expert. */
  expertData: number;
  sequenceParallel: boolean;
  /** [first, end) decoder layers of each stage. */
  stages: [number, number][];
}

export interface RolloutLayoutInput {
  tensor?: number;
  /** Experts split over the rollout's tensor ranks whole (expert parallelism) instead of each expert cut by tensor. */
  expert?: boolean;
}

export interface RolloutLayout {
  tensor: number;
  expert: boolean;
  /** Rollout replicas: GPUs / tensor. */
  data: number;
}

export class LayoutError extends RangeError {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "LayoutError";
  }
}

function size(value: unknown, field: string): number {
  if (value === undefined) return 1;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    throw new LayoutError(field, `${JSON.stringify(value)} must be an integer ≥ 1`);
  }
  return value;
}

function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n; d++) if (n % d === 0) out.push(d);
  return out;
}

const allowed = (values: number[]) =>
  values.length > 12 ? `${values.slice(0, 12).join(", ")}, …` : values.join(", ");

/**
 * Why `ranks` tensor-parallel ranks cannot split the model's tensors (the engine's rules: heads,
 * vocabulary and intermediate sizes divide; key/value heads fewer than ranks are replicated);
 * empty when they can.
 */
function tensorSplitProblems(spec: ModelSpec, ranks: number, expertsWhole: boolean): string[] {
  if (ranks === 1) return [];
  const ok = (n: number) => n % ranks === 0;
  const a = spec.attention;
  const why: string[] = [];
  if (!ok(a.heads)) why.push(`the ${a.heads} attention heads`);
  if (a.kind === "gqa" && !(ok(a.kvHeads) || ranks % a.kvHeads === 0)) {
    why.push(`the ${a.kvHeads} key-value heads (fewer than ranks must divide them)`);
  }
  if (!ok(spec.vocab)) why.push(`the vocabulary of ${spec.vocab}`);
  const denseLayers = spec.layers - (spec.moe?.layers.length ?? 0);
  if (denseLayers > 0 && !ok(spec.intermediate)) why.push(`intermediate_size ${spec.intermediate}`);
  if (spec.moe && spec.moe.sharedIntermediate > 0 && !ok(spec.moe.sharedIntermediate)) {
    why.push(`the shared experts' intermediate size ${spec.moe.sharedIntermediate}`);
  }
  if (spec.moe && !expertsWhole && !ok(spec.moe.intermediate))
    why.push(`moe_intermediate_size ${spec.moe.intermediate}`);
  if (spec.moe && expertsWhole && !ok(spec.moe.experts)) why.push(`the ${spec.moe.experts} experts`);
  return why;
}

function checkTensorSplit(spec: ModelSpec, ranks: number, field: string, expertsWhole: boolean): void {
  const why = tensorSplitProblems(spec, ranks, expertsWhole);
  if (why.length === 0) return;
  const fits = divisors(Math.max(ranks * 4, 64)).filter(
    (d) => tensorSplitProblems(spec, d, expertsWhole).length === 0,
  );
  throw new LayoutError(field, `${ranks} does not divide ${why.join(", ")}; allowed: ${allowed(fits)}`);
}

/** Decoder layers per stage: the given first/last counts and an even split of the rest. */
export function stageLayers(
  layers: number,
  pipeline: number,
  first?: number,
  last?: number,
): [number, number][] {
  const field = "train.firstStageLayers";
  if (pipeline > layers) {
    throw new LayoutError("train.pipeline", `${pipeline} stages exceed the ${layers} decoder layers`);
  }
  if (pipeline === 1) {
    if ((first !== undefined && first !== layers) || (last !== undefined && last !== layers)) {
      throw new LayoutError(field, "first/last stage layers need train.pipeline > 1");
    }
    return [[0, layers]];
  }
  let f = first;
  let l = last;
  if (f === undefined && l === undefined) {
    if (layers % pipeline === 0) {
      f = layers / pipeline;
      l = f;
    } else {
      // The middle stages one layer heavier than an even split, the ends take what is left
      // (DeepSeek-V3's 61 layers over 16 stages: 3, 14 × 4, 2 as in verl's recipe).
      for (let mid = Math.ceil(layers / pipeline); mid <= layers; mid++) {
        const rest = layers - mid * (pipeline - 2);
        if (pipeline === 2) {
          f = Math.ceil(layers / 2);
          l = layers - f;
          break;
        }
        if (rest >= 2 && rest <= 2 * mid) {
          f = Math.ceil(rest / 2);
          l = rest - f;
          break;
        }
      }
    }
  }
  if (f === undefined || l === undefined) {
    throw new LayoutError(field, "give both train.firstStageLayers and train.lastStageLayers, or neither");
  }
  const middle = pipeline - 2;
  for (const [name, v] of [
    ["train.firstStageLayers", f],
    ["train.lastStageLayers", l],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 1)
      throw new LayoutError(name, `${JSON.stringify(v)} must be an integer ≥ 1`);
  }
  const rest = layers - f - l;
  if (middle === 0 ? rest !== 0 : rest < middle || rest % middle !== 0) {
    throw new LayoutError(
      field,
      middle === 0
        ? `first ${f} + last ${l} must be the ${layers} layers with 2 stages`
        : `first ${f} + last ${l} leave ${rest} layers, which the ${middle} middle stages cannot share evenly`,
    );
  }
  const out: [number, number][] = [[0, f]];
  const per = middle > 0 ? rest / middle : 0;
  for (let s = 0; s < middle; s++) out.push([f + s * per, f + (s + 1) * per]);
  out.push([layers - l, layers]);
  return out;
}

/** The training layout on `gpus` GPUs; data (and expert data) computed. */
export function resolveTrainLayout(spec: ModelSpec, gpus: number, input: TrainLayoutInput = {}): TrainLayout {
  if (input === null || typeof input !== "object") throw new LayoutError("train", "expected an object");
  const known = [
    "tensor",
    "context",
    "pipeline",
    "expert",
    "expertTensor",
    "sequenceParallel",
    "firstStageLayers",
    "lastStageLayers",
  ];
  for (const k of Object.keys(input)) {
    if (!known.includes(k)) throw new LayoutError(`train.${k}`, `unknown; allowed: ${known.join(", ")}`);
  }
  const tensor = size(input.tensor, "train.tensor");
  const context = size(input.context, "train.context");
  const pipeline = size(input.pipeline, "train.pipeline");
  const expert = size(input.expert, "train.expert");
  const expertTensor = size(input.expertTensor, "train.expertTensor");
  const modelRanks = tensor * context * pipeline;
  if (gpus % modelRanks !== 0) {
    const [field, others] =
      gpus % tensor !== 0
        ? ["tensor", 1]
        : gpus % (tensor * pipeline) !== 0
          ? ["pipeline", tensor]
          : ["context", tensor * pipeline];
    throw new LayoutError(
      `train.${field}`,
      `tensor ${tensor} × context ${context} × pipeline ${pipeline} = ${modelRanks} does not divide the ${gpus} GPUs; allowed ${field}: ${allowed(divisors(gpus / others))}`,
    );
  }
  const data = gpus / modelRanks;
  const stageRanks = tensor * context * data;
  if (stageRanks % (expert * expertTensor) !== 0) {
    throw new LayoutError(
      "train.expert",
      `expert ${expert} × expertTensor ${expertTensor} must divide tensor × context × data = ${stageRanks}; allowed expert: ${allowed(divisors(stageRanks / expertTensor))}`,
    );
  }
  checkTensorSplit(spec, tensor, "train.tensor", false);
  if (spec.moe) {
    if (spec.moe.experts % expert !== 0) {
      throw new LayoutError(
        "train.expert",
        `${expert} does not divide the ${spec.moe.experts} experts; allowed: ${allowed(divisors(spec.moe.experts).filter((d) => stageRanks % (d * expertTensor) === 0))}`,
      );
    }
    if (spec.moe.intermediate % expertTensor !== 0) {
      throw new LayoutError(
        "train.expertTensor",
        `${expertTensor} does not divide moe_intermediate_size ${spec.moe.intermediate}`,
      );
    }
  } else if (expert > 1 || expertTensor > 1) {
    throw new LayoutError(
      expert > 1 ? "train.expert" : "train.expertTensor",
      `${spec.architecture} is dense (no experts); allowed: 1`,
    );
  }
  const sequenceParallel = input.sequenceParallel ?? false;
  if (typeof sequenceParallel !== "boolean") {
    throw new LayoutError(
      "train.sequenceParallel",
      `${JSON.stringify(sequenceParallel)} must be true or false`,
    );
  }
  if (sequenceParallel && tensor === 1) {
    throw new LayoutError("train.sequenceParallel", "shards over the tensor group: needs train.tensor > 1");
  }
  for (const key of ["firstStageLayers", "lastStageLayers"] as const) {
    const v = input[key];
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 1)) {
      throw new LayoutError(`train.${key}`, `${JSON.stringify(v)} must be an integer ≥ 1`);
    }
  }
  return {
    tensor,
    context,
    pipeline,
    expert,
    expertTensor,
    data,
    expertData: stageRanks / (expert * expertTensor),
    sequenceParallel,
    stages: stageLayers(spec.layers, pipeline, input.firstStageLayers, input.lastStageLayers),
  };
}

/** The rollout layout: tensor-parallel replicas over all GPUs (colocated with training). */
export function resolveRolloutLayout(
  spec: ModelSpec,
  gpus: number,
  input: RolloutLayoutInput = {},
): RolloutLayout {
  if (input === null || typeof input !== "object") throw new LayoutError("rollout", "expected an object");
  for (const k of Object.keys(input)) {
    if (k !== "tensor" && k !== "expert")
      throw new LayoutError(`rollout.${k}`, "unknown; allowed: tensor, expert");
  }
  const tensor = size(input.tensor, "rollout.tensor");
  if (gpus % tensor !== 0) {
    throw new LayoutError(
      "rollout.tensor",
      `${tensor} does not divide the ${gpus} GPUs; allowed: ${allowed(divisors(gpus))}`,
    );
  }
  const expert = input.expert ?? false;
  if (typeof expert !== "boolean")
    throw new LayoutError("rollout.expert", `${JSON.stringify(expert)} must be true or false`);
  if (expert && !spec.moe) throw new LayoutError("rollout.expert", `${spec.architecture} has no experts`);
  checkTensorSplit(spec, tensor, "rollout.tensor", expert);
  return { tensor, expert, data: gpus / tensor };
}

/** Whether the training layout is one the engine runs today; the reasons when not. */
export function engineSupport(spec: ModelSpec, layout: TrainLayout): string[] {
  const why: string[] = [];
  if (layout.context > 1 && (spec.moe || spec.attention.kind === "mla" || spec.vision)) {
    why.push("context parallelism of MoE, MLA and vision models is not in the engine yet");
  }
  if (layout.context > 1 && layout.pipeline > 1)
    why.push("context parallelism with pipeline stages is not in the engine yet");
  if (layout.expertTensor > 1) why.push("expert tensor parallelism is not in the engine yet");
  if (spec.vision && layout.pipeline > 1)
    why.push("pipeline parallelism of Qwen2.5-VL is refused by the engine");
  if (spec.vision && layout.sequenceParallel)
    why.push("sequence parallelism of Qwen2.5-VL is refused by the engine");
  return why;
}
