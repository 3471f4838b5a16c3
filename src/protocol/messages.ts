// Every message that crosses a socket, as a TypeScript type and the check that enforces it.
// Client ⇄ controller: {id, method, args} / {id, ok, result} / {id, ok: false, error}.
// Controller ⇄ worker: {type: "join" | "welcome" | "heartbeat" | "command" | "reply" | ...}.
// Worker commands (what a rank can be told to do) are declared here once; the controller forwards
// them and the worker's command table implements them.
import type { MemoryBytes, ReshardStats, RouterStats, ScheduleStats } from "../native/model.js";
import type { PolicyLossMetrics } from "../native/policy-loss.js";
import type { Plan } from "../plan/plan.js";
import {
  anything,
  array,
  boolean,
  type Check,
  type Infer,
  integer,
  literal,
  number,
  object,
  optional,
  record,
  string,
  typedArray,
} from "./schema.js";

/** The error half of a reply. `field` names the bad argument; worker failures carry the rest. */
export interface ErrorBody {
  code:
    | "BAD_FRAME"
    | "BAD_ARGS"
    | "UNKNOWN_METHOD"
    | "TOO_LARGE"
    | "NO_WORKERS"
    | "WORKER_LOST"
    | "WORKER_ERROR"
    | "NOT_AVAILABLE"
    | "SHUTTING_DOWN"
    /** A remote client named a path or module outside what it may reach (docs/security.md). */
    | "FORBIDDEN"
    /** A file or folder named in the request does not exist. */
    | "NOT_FOUND"
    /** A data file's content is wrong (a bad JSONL line, no prompts). */
    | "BAD_DATA"
    /** Another operation of the experiment runs. */
    | "BUSY"
    /** What was asked for is no longer kept (rollouts of an old step). */
    | "NOT_KEPT"
    /** The operation does not fit where the experiment stands. */
    | "BAD_STATE"
    | "INTERNAL";
  message: string;
  field?: string;
  rank?: number;
  command?: string;
  stderrTail?: string;
  stack?: string;
}

export type ReplyHeader =
  | { id: number | null; ok: true; result: unknown }
  | { id: number | null; ok: false; error: ErrorBody };

export const requestHeader = object({
  id: integer({ min: 0 }),
  method: string({ maxLength: 100 }),
  args: anything(),
  bodies: optional(anything()),
});

// ---- worker commands -------------------------------------------------------------------------

const ids = typedArray(Int32Array, BigInt64Array);
const modelName = string({ maxLength: 200 });
/** A second mesh of the run's ranks by name (the rollout's layout); absent: the run's mesh. */
const meshKey = string({ pattern: /^[a-z][a-z0-9-]{0,31}$/ });
const hostTensor = object({
  name: string({ maxLength: 500 }),
  dtype: literal("float32", "float64", "float16", "bfloat16"),
  shape: array(integer({ min: 0 }), { maxLength: 8 }),
  data: typedArray(Float32Array, Float64Array, Uint16Array),
});

/** Vision-language models: a packed batch's images (pixel_values, image_grid_thw), in token order. */
const images = object({ pixels: typedArray(Float32Array), grids: typedArray(Int32Array) });

/** name → argument check. The worker's command table has exactly these keys (checked by tsc). */
export const workerCommandArgs = {
  "worker.info": object({}),
  "worker.freePort": object({}),
  "model.load": object({
    name: modelName,
    /** An HF checkpoint folder on the worker's file system ... */
    dir: optional(string()),
    /** ... or a parsed config.json with every tensor sent along. */
    config: optional(record()),
    tensors: optional(array(hostTensor, { maxLength: 100_000 })),
    device: optional(string({ pattern: /^(cpu|cuda(:\d+)?)$/ })),
    dtype: optional(literal("float32", "float16", "bfloat16")),
    /** Load this rank's slices under the worker's mesh (dist.mesh); every rank of it loads together. */
    sharded: optional(boolean()),
    /** With sharded: the mesh made by dist.mesh with this key instead of the run's. */
    mesh: optional(meshKey),
    /** Vision-language models: load the vision tower as frozen (no gradients, no optimizer state). */
    freezeVision: optional(boolean()),
  }),
  "model.generate": object({
    name: modelName,
    /** None: an expert-parallel rank with no share joins the others' steps in lockstep. */
    prompts: array(ids, { minLength: 0, maxLength: 100_000 }),
    maxNewTokens: optional(integer({ min: 0 })),
    temperature: optional(number({ min: 0 })),
    topK: optional(integer({ min: 0 })),
    topP: optional(number({ min: 0, max: 1 })),
    stopTokenIds: optional(array(integer({ min: 0 }))),
    seed: optional(integer({ min: 0 })),
    /** Batch-invariant sampling: prompt i draws as sequence sequenceOffset + i of the seed. */
    sequenceOffset: optional(integer({ min: 0 })),
    /** MoE: return each token's routed experts (routing replay). */
    recordExperts: optional(boolean()),
    /** Run (collectives included) but send no generations back: a replica's other ranks. */
    quiet: optional(boolean()),
    /** Vision-language models: the prompts' images, in prompt order. */
    images: optional(images),
  }),
  "model.logprobs": object({
    name: modelName,
    tokens: ids,
    cuSeqlens: ids,
    temperature: optional(number({ min: 0 })),
    /** MoE routing replay: [tokens, moe layers, topK] expert ids (rows of -1 route normally). */
    routedExperts: optional(typedArray(Int32Array)),
    /** Run (collectives included) but send empty arrays back: a replica's other ranks. */
    quiet: optional(boolean()),
    images: optional(images),
  }),
  /** MoE router statistics summed since the last call (then reset). */
  "model.routerStats": object({ name: modelName }),
  "model.trainStep": object({
    name: modelName,
    tokens: ids,
    cuSeqlens: ids,
    /** One entry per predicted token (tokens - sequences): which tokens count, and how much. */
    lossMask: typedArray(Float32Array),
    /** Tokens counted in the whole mini-batch, so micro-batch gradients sum to the mini-batch's. */
    tokenNormaliser: number({ min: Number.MIN_VALUE }),
    temperature: optional(number({ min: 0 })),
  }),
  /** AdamW over the model's parameters: {lr, schedule, beta1?, beta2?, eps?, weightDecay?, ...}. */
  "model.initOptimizer": object({ name: modelName, options: record() }),
  "model.optimizerStep": object({ name: modelName }),
  /**
   * One optimizer update of the RL policy loss: every micro-batch's forward/backward (gradients
   * accumulate), then the optimizer step. counts are those of the whole mini-batch. A data-parallel
   * rank with no micro-batches this update sends none and still joins the (collective) step.
   */
  "model.policyUpdate": object({
    name: modelName,
    microBatches: array(
      object({
        tokens: ids,
        cuSeqlens: ids,
        /** Left out: on-policy (old = the update's own forward), whose logprobs come back in `forward`. */
        oldLogprobs: optional(typedArray(Float32Array)),
        advantages: typedArray(Float32Array),
        mask: typedArray(Float32Array),
        refLogprobs: optional(typedArray(Float32Array)),
        rolloutIsWeights: optional(typedArray(Float32Array)),
        routedExperts: optional(typedArray(Int32Array)),
        images: optional(images),
      }),
      { minLength: 0, maxLength: 100_000 },
    ),
    counts: object({
      tokens: number({ min: Number.MIN_VALUE }),
      sequences: number({ min: Number.MIN_VALUE }),
    }),
    config: record(),
    temperature: optional(number({ min: 0 })),
  }),
  "model.save": object({ name: modelName, dir: string(), maxShardBytes: optional(integer({ min: 1 })) }),
  /** The residual stream at one layer for packed tokens (debugging). */
  "model.activations": object({
    name: modelName,
    tokens: ids,
    cuSeqlens: ids,
    layer: anything(),
  }),
  /** The peak learning rate and the clip norm, changed between steps. */
  "model.setTraining": object({
    name: modelName,
    lr: optional(number({ min: Number.MIN_VALUE })),
    maxGradNorm: optional(number({ min: Number.MIN_VALUE })),
    recompute: optional(
      object({ granularity: literal("none", "full", "selective"), layers: optional(integer({ min: 0 })) }),
    ),
  }),
  /** Bytes the model holds on this rank now, and as they stood before the last update's optimizer step. */
  "model.memory": object({ name: modelName }),
  /** The optimizer state (default) or the parameters to host memory and back. */
  "model.offload": object({ name: modelName, what: optional(literal("optimizer", "parameters")) }),
  "model.onload": object({ name: modelName, what: optional(literal("optimizer", "parameters")) }),
  /** The optimizer's state to one safetensors file / back (checkpoints). */
  "model.saveOptimizer": object({ name: modelName, file: string() }),
  "model.loadOptimizer": object({ name: modelName, file: string() }),
  "model.free": object({ name: modelName }),
  /**
   * `name`'s parameters set from `from`'s weights (the same model under another mesh of the same
   * ranks: training → rollout), a bucket of tensors at a time; `verify` checks each received region
   * against its sender's checksum. Every rank calls it together.
   */
  "model.reshard": object({
    name: modelName,
    from: modelName,
    bucketBytes: optional(integer({ min: 1 })),
    verify: optional(boolean()),
  }),
  /** PPO's value model (native/critic.ts): load with its optimizer, values, one update, save. */
  "critic.load": object({
    name: modelName,
    dir: string(),
    dtype: optional(literal("float32", "bfloat16", "float16")),
    seed: optional(integer({ min: 0 })),
    /** AdamW options as model.initOptimizer's. */
    optimizer: record(),
  }),
  "critic.values": object({ name: modelName, tokens: ids, cuSeqlens: ids }),
  /** Every micro-batch's value-loss backward, then the optimizer step; counts of the whole mini-batch. */
  "critic.update": object({
    name: modelName,
    microBatches: array(
      object({
        tokens: ids,
        cuSeqlens: ids,
        values: typedArray(Float32Array),
        returns: typedArray(Float32Array),
        mask: typedArray(Float32Array),
      }),
      { minLength: 1, maxLength: 100_000 },
    ),
    counts: object({
      tokens: number({ min: Number.MIN_VALUE }),
      sequences: number({ min: Number.MIN_VALUE }),
    }),
    config: record(),
  }),
  /** The critic's HF folder (with score.*) and its optimizer state (checkpoints). */
  "critic.save": object({ name: modelName, dir: string(), optimizerFile: string() }),
  "critic.loadOptimizer": object({ name: modelName, file: string() }),
  "critic.free": object({ name: modelName }),
  "dist.init": object({
    rank: integer({ min: 0 }),
    worldSize: integer({ min: 1 }),
    storeHost: string(),
    storePort: integer({ min: 1, max: 65535 }),
    backend: literal("gloo", "nccl"),
  }),
  "dist.allReduce": object({ values: typedArray(Float32Array, Float64Array) }),
  /** The run's process mesh over the dist.init group (every rank, the same layout). */
  "dist.mesh": object({
    tensor: optional(integer({ min: 1 })),
    context: optional(integer({ min: 1 })),
    pipeline: optional(integer({ min: 1 })),
    expert: optional(integer({ min: 1 })),
    data: optional(integer({ min: 1 })),
    sequenceParallel: optional(boolean()),
    firstStageLayers: optional(integer({ min: 1 })),
    lastStageLayers: optional(integer({ min: 1 })),
    /** Another mesh beside the run's (the rollout layout), by name; no relay group is made for it. */
    key: optional(meshKey),
  }),
  /** Waits; the test of a worker lost mid-command uses it. */
  "debug.sleep": object({ ms: integer({ min: 0, max: 3_600_000 }) }),
  /**
   * Takes arrays and answers `replyFloats` floats, touching no engine: the controller-overhead
   * benchmark moves a recipe-sized step's data through the real fan-out with it.
   */
  "debug.payload": object({
    arrays: array(typedArray(Int32Array, Float32Array), { maxLength: 1_000_000 }),
    replyFloats: integer({ min: 0, max: 1 << 30 }),
    quiet: optional(boolean()),
  }),
} satisfies Record<string, Check<unknown>>;

export type WorkerCommand = keyof typeof workerCommandArgs;
export type WorkerCommandArgs<C extends WorkerCommand> = Infer<(typeof workerCommandArgs)[C]>;
export const workerCommands = Object.keys(workerCommandArgs) as WorkerCommand[];

export interface WorkerMemory {
  hostTotalBytes: number;
  hostFreeBytes: number;
  rssBytes: number;
  deviceTotalBytes?: number;
}

/** A worker's place in its run's mesh (parallel/mesh.h). */
export interface WorkerMesh {
  /** "TP2 x DP2" */
  describe: string;
  coordinates: {
    tensor: number;
    context: number;
    data: number;
    pipeline: number;
    expert: number;
    expertData: number;
  };
}

export interface WorkerInfo {
  /** From dist.mesh on. */
  mesh?: WorkerMesh;
  pid: number;
  hostname: string;
  device: string;
  /** The accelerator's name (e.g. "NVIDIA H200"), when there is one. */
  deviceName?: string;
  memory: WorkerMemory;
  models: string[];
}

// ---- controller ⇄ worker ---------------------------------------------------------------------

export const workerToController = {
  join: object({
    type: literal("join"),
    pid: integer({ min: 1 }),
    hostname: string(),
    /** The address other ranks reach this worker's host at (the process-group store lives on rank 0). */
    host: string(),
    device: string(),
    memory: record(),
    /** From the launcher (RANK, SLURM_PROCID) or the controller that spawned it. */
    rank: optional(integer({ min: 0 })),
  }),
  heartbeat: object({ type: literal("heartbeat"), stderrTail: optional(string({ maxLength: 1 << 16 })) }),
  reply: object({
    type: literal("reply"),
    id: integer({ min: 0 }),
    ok: boolean(),
    result: optional(anything()),
    error: optional(anything()),
    bodies: optional(anything()),
  }),
  event: object({ type: literal("event"), topic: string(), data: anything(), bodies: optional(anything()) }),
};

export type WorkerJoin = Infer<typeof workerToController.join>;

export type ControllerToWorker =
  | { type: "welcome"; rank: number; worldSize: number; heartbeatMs: number; controllerTimeoutMs: number }
  | { type: "refuse"; reason: string }
  | { type: "heartbeat" }
  | {
      type: "command";
      id: number;
      command: WorkerCommand;
      args: unknown;
      /**
       * A replica's data sent once: "send" — this rank got the frames and broadcasts them to its
       * replica's other ranks (dist.mesh made that group) before running; "receive" — this rank's
       * arguments come from that broadcast, merged under the few sent here (quiet).
       */
      relay?: "send" | "receive";
    }
  | { type: "exit" };

// ---- events (PUB) ----------------------------------------------------------------------------

export interface WorkerSummary {
  rank: number;
  pid: number;
  hostname: string;
  device: string;
  memory: Record<string, unknown>;
  local: boolean;
  state: "ready" | "busy";
  running: string[];
  models: string[];
  /** After dist.mesh: the layout ("TP2 x DP2") and this rank's coordinates in it. */
  mesh?: { describe: string; coordinates: Record<string, number> };
  /** The rollout's own layout (rollout.parallel) and this rank's place in it, when a run has one. */
  rolloutMesh?: { describe: string; coordinates: Record<string, number> };
  /**
   * Per model, the bytes this rank held at its last model.memory (the experiments read it every
   * step: after the rollout and around each update), and when; status never waits on a busy worker.
   */
  modelMemory?: Record<string, { bytes: MemoryBytes; at: string }>;
  joinedAt: string;
}

export interface WorkerFailure {
  rank: number;
  pid: number;
  reason: string;
  /** The commands it was running when lost (empty when idle). */
  commands: string[];
  stderrTail: string;
  at: string;
}

export interface EventMap {
  "worker.joined": WorkerSummary;
  "worker.lost": WorkerFailure;
  log: { rank: number; stream: "stdout" | "stderr"; text: string };
  progress: { rank?: number; task: string; done: number; total: number };
  metrics: { rank?: number; row: Record<string, number> };
  /** An experiment's stage started (or a step ended: stage "done"). */
  "experiment.progress": ExperimentProgress;
  /** An experiment finished a step: its metrics row. */
  "experiment.metrics": { id: string; row: Record<string, number> };
}

export interface ExperimentProgress {
  id: string;
  step: number;
  totalSteps: number;
  stage: string;
  elapsedS: number;
  reward?: number;
  tokens?: number;
}

/** The stages of one RL step, in order (DESIGN.md §3); hooks name them (`after:rollout`). */
export const experimentStages = [
  "rollout",
  "score",
  "filter",
  "old_logprobs",
  "ref",
  "advantages",
  "update",
  "sync",
] as const;
export type ExperimentStage = (typeof experimentStages)[number];

/** What an experiment op may be: a stage, or one of the operations around them. */
export const experimentOps = [
  ...experimentStages,
  "step",
  "run",
  "stop",
  "discard",
  "state",
  "metrics",
  "rollouts",
  "save",
  "export",
  "close",
  "set",
  "snapshot",
  "restore",
  "replay",
  "batch",
  "patch",
  "activations",
  "validate",
] as const;
export type ExperimentOp = (typeof experimentOps)[number];

/** Where an experiment stands. */
export interface ExperimentStatus {
  id: string;
  name: string;
  runDir: string;
  step: number;
  totalSteps: number;
  busy: string | null;
  /** The step in progress: its number and the stages done so far. */
  inProgress: { step: number; stagesDone: string[]; samples: number } | null;
  datasetSize: number;
  promptsFilteredOut: number;
  device: string;
  /** What the user should know about how the run started (a newer checkpoint refused, folders cleaned). */
  warnings: string[];
}
export type EventTopic = keyof EventMap;

// ---- client methods --------------------------------------------------------------------------

export interface ControllerState {
  pid: number;
  address: string;
  startedAt: string;
  worldSize: number;
  workers: WorkerSummary[];
  failures: WorkerFailure[];
  processGroup: { backend: string; storeHost: string; storePort: number } | null;
  /** Worker commands sent since the start and their bytes (all, and of array bodies); replies and theirs. */
  traffic: {
    commands: number;
    commandBytes: number;
    commandBodyBytes: number;
    replies: number;
    replyBytes: number;
    replyBodyBytes: number;
  };
}

export interface RankResult<T = unknown> {
  rank: number;
  result: T;
}

/** name → [argument check, result type]; the controller's handler table has exactly these keys. */
export const clientMethodArgs = {
  /** Who is there: the controller's state. */
  status: object({}),
  /** Answers its arguments back, bodies included (protocol tests, latency probes). */
  echo: anything(),
  /** Runs one worker command on some ranks (all when `ranks` is left out). */
  run: object({
    command: literal(...(workerCommands as [WorkerCommand, ...WorkerCommand[]])),
    args: anything(),
    ranks: optional(array(integer({ min: 0 }), { minLength: 1 })),
    timeoutMs: optional(integer({ min: 1 })),
  }),
  /** Sets up the engine's process group across all ranks (rank 0 hosts the c10d store). */
  initProcessGroup: object({ backend: optional(literal("gloo", "nccl")) }),
  /** Builds an experiment (config as resolveConfig takes it), or resumes one from a checkpoint or run folder. */
  "experiment.create": object({
    config: optional(record()),
    resume: optional(string()),
    totalSteps: optional(integer({ min: 1 })),
    /** With resume: the parallel layout to continue in (config.parallel's fields). */
    parallel: optional(record()),
  }),
  /** One operation on an experiment: a stage, step, run(n), metrics, rollouts, save … */
  "experiment.call": object({
    id: string({ maxLength: 200 }),
    op: literal(...experimentOps),
    steps: optional(integer({ min: 0 })),
    step: optional(integer({ min: 1 })),
    /** stop: at the step's next stage boundary (the kernel's Interrupt), not after the step. */
    atStage: optional(boolean()),
    dir: optional(string()),
    /** set: settings to change (see ExperimentRun.set). */
    patch: optional(record()),
    /** restore: a snapshot id or a checkpoint folder. */
    snapshot: optional(string()),
    /** patch: new scores for the step in progress, or the rows to keep. */
    scores: optional(typedArray(Float64Array)),
    keep: optional(typedArray(Int32Array)),
    /** activations: the layer ("model.layers.N", "model.norm", "model.embed_tokens"), the rollouts rows. */
    layer: optional(anything()),
    rows: optional(typedArray(Int32Array)),
  }),
  /**
   * A memory and step-time plan (src/plan: PlanConfig) for this cluster: `gpus` defaults to its
   * ranks (to the recipe's when a recipe is named), `gpu` to the GPU type its workers report.
   */
  plan: object({ config: record() }),
  /** The experiments this controller holds. */
  "experiment.list": object({}),
  /** Starts again the local workers that were lost, on their old ranks. */
  respawn: object({}),
  shutdown: object({}),
};

export type ClientMethod = keyof typeof clientMethodArgs;

export interface ClientMethodResults {
  status: ControllerState;
  echo: unknown;
  run: RankResult[];
  initProcessGroup: ControllerState["processGroup"];
  respawn: { ranks: number[] };
  shutdown: { stopping: true };
  "experiment.create": ExperimentStatus;
  "experiment.call": unknown;
  "experiment.list": ExperimentStatus[];
  plan: Plan;
}

/** What each worker command answers (per rank). */
export interface WorkerCommandResults {
  "worker.info": WorkerInfo;
  "worker.freePort": { port: number };
  "model.load": { name: string; parameters: number; device: string };
  "model.generate": {
    generations: {
      tokens: Int32Array;
      logprobs: Float32Array;
      finishReason: "stop" | "length";
      experts?: Int32Array;
    }[];
    /** The KV cache this call used on this rank. */
    kvCacheBytes: number;
  };
  "model.routerStats": RouterStats;
  "model.logprobs": { logprobs: Float32Array; entropy: Float32Array };
  "model.trainStep": { loss: number; tokens: number };
  "model.initOptimizer": { name: string };
  "model.optimizerStep": { gradNorm: number; lr: number; step: number; skipped: boolean };
  "model.policyUpdate": {
    /** Summed over the micro-batches: the mini-batch's loss and verl's actor metrics. */
    loss: number;
    metrics: PolicyLossMetrics;
    tokens: number;
    microBatches: number;
    gradNorm: number;
    lr: number;
    step: number;
    skipped: boolean;
    /** Seconds in forward/backward and in the optimizer step. */
    backwardS: number;
    optimizerS: number;
    /** The micro-batch schedule as this rank measured it (pipeline stages, transfer waits). */
    schedule: ScheduleStats;
    /**
     * Micro-batches sent without oldLogprobs (on-policy): per micro-batch, in order, the update
     * forward's logprobs and entropy per predicted token (the old logprobs of that step).
     */
    forward?: { logprobs: Float32Array; entropy: Float32Array }[];
  };
  "model.save": { dir: string };
  "model.setTraining": { name: string };
  "model.memory": {
    now: MemoryBytes;
    /** As it stood after the last update's backward, before its optimizer step (gradients held). */
    update?: MemoryBytes;
    /**
     * The last update's allocator peak above what the rank held when the update began, less the
     * gradients it made: the saved activations, the logprob chunk and the temporaries at the peak.
     */
    updateActivationsPeak?: number;
  };
  "model.reshard": ReshardStats;
  "model.offload": { bytes: number; seconds: number };
  "model.onload": { bytes: number; seconds: number };
  "model.activations": { values: Float32Array; shape: [number, number] };
  "model.saveOptimizer": { file: string };
  "model.loadOptimizer": { file: string };
  "model.free": { freed: boolean };
  "critic.load": { name: string };
  "critic.values": { values: Float32Array };
  "critic.update": {
    /** Summed over the micro-batches: the mini-batch's value loss and verl's critic metrics. */
    vfLoss: number;
    vfClipfrac: number;
    vpredMean: number;
    gradNorm: number;
    lr: number;
    skipped: boolean;
    microBatches: number;
  };
  "critic.save": { dir: string };
  "critic.loadOptimizer": { file: string };
  "critic.free": { freed: boolean };
  "dist.init": { rank: number; worldSize: number; backend: string };
  "dist.allReduce": { values: Float32Array | Float64Array };
  "dist.mesh": WorkerMesh;
  "debug.sleep": { sleptMs: number };
  "debug.payload": { bytes: number; floats: Float32Array };
}
