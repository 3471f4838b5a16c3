// One RL experiment, driven by the controller: verl's dataflow (DESIGN.md §3) as named stages
//   rollout → score → filter → old_logprobs → ref → advantages → update → sync
// each callable alone and timed (timing_s/<stage>), step() running them in order, run(n) running
// steps. The controller holds only small things (token ids, per-token floats, scalars); weights,
// gradients and optimizer state stay on the workers. Reference and old logprobs come before the
// advantages (verl's order) because a KL penalty in the reward needs both.

import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import type { Table } from "apache-arrow";
import type { ImageInputs } from "../native/model.js";
import type { PolicyLossMetrics } from "../native/policy-loss.js";
import type { ModelSpec } from "../plan/model.js";
import {
  type ExperimentStage,
  experimentStages,
  type WorkerCommand,
  type WorkerCommandArgs,
  type WorkerCommandResults,
} from "../protocol/messages.js";
import {
  gaeAdvantages,
  gpgAdvantages,
  grpoAdvantages,
  grpoPassKAdvantages,
  opoAdvantages,
  reinforcePlusPlusBaselineAdvantages,
  reinforcePlusPlusTokenAdvantages,
  remaxAdvantages,
  rlooAdvantages,
} from "../rl/advantages.js";
import { planMicroBatches } from "../rl/balance.js";
import { ConfigError, needsReference, type ResolvedConfig, resolveConfig } from "../rl/config.js";
import {
  mixSeed,
  PromptDataset,
  type PromptDatasetState,
  type PromptItem,
  readPromptRows,
} from "../rl/data.js";
import { DynamicSamplingBatch, overlongPenalty } from "../rl/filter.js";
import { concatImages, type ImageSupport, imageSupport, PromptEncoder, promptImages } from "../rl/images.js";
import { AdaptiveKlController, FixedKlController, type KlController, klPerToken } from "../rl/kl.js";
import { MetricsLog } from "../rl/metrics.js";
import { RewardRunner } from "../rl/rewards/runner.js";
import { offPolicyMetrics, rolloutCorrection } from "../rl/rollout-correction.js";
import { activationsTable, rolloutsTable } from "../rl/rollouts.js";
import { validationMetrics } from "../rl/validation.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import {
  findCheckpoint,
  listCheckpoints,
  removeStalePartials,
  verifyCheckpoint,
  writeManifest,
} from "../util/checkpoint.js";
import { UserError } from "../util/errors.js";
import {
  ModelRole,
  memoryMetrics,
  type PackedSequences,
  type RankCall,
  type RankCallEach,
  RunRanks,
} from "./roles.js";
import {
  concat,
  defaultPeakFlops,
  packSamples,
  readFlopShape,
  responseAligned,
  type Sample,
  type StepBatch,
  stepMetrics,
} from "./step.js";

export type { RankCall, RankCallEach, Sample, StepBatch };
export { findCheckpoint, verifyCheckpoint };

export const stageNames = experimentStages;
export type StageName = ExperimentStage;

/** verl's timing_s/<name> for each stage. */
const timingKey: Record<StageName, string> = {
  rollout: "timing_s/gen",
  score: "timing_s/reward",
  filter: "timing_s/filter",
  old_logprobs: "timing_s/old_log_prob",
  ref: "timing_s/ref",
  advantages: "timing_s/adv",
  update: "timing_s/update_actor",
  sync: "timing_s/update_weights",
};

/** What the controller keeps between steps and writes into a checkpoint. */
interface ExperimentState {
  version: 1;
  /** Steps completed. */
  step: number;
  dataset: PromptDatasetState;
  klCoefficient: number | null;
  config: ResolvedConfig;
}

export interface ProgressEvent {
  step: number;
  totalSteps: number;
  stage: StageName | "checkpoint" | "done";
  elapsedS: number;
  reward?: number;
  tokens?: number;
}

export interface ExperimentHooks {
  progress?(event: ProgressEvent): void;
  metrics?(row: Record<string, number>): void;
}

let runCounter = 0;

/** What a hook changed in a step (patchBatch), kept so that replay(step) changes it the same way. */
/** Where a step run by the controller stopped for an Interrupt (the client's Paused). */
export interface StepStopped {
  step: number;
  pausedAt: `before:${StageName}`;
}

function isStopped(r: Record<string, number> | StepStopped): r is StepStopped {
  return typeof (r as StepStopped).pausedAt === "string";
}

interface RecordedPatch {
  /** The last stage done when the patch came. */
  after: StageName;
  scores?: Float64Array;
  keep?: Int32Array;
}

/** A setting changed between steps: `step` steps were done when set() came. */
interface RecordedChange {
  step: number;
  patch: Record<string, unknown>;
}

/** One number per response's tokens (FNV-1a), so that replay can compare any step, kept or not. */
function tokensDigest(tokens: Int32Array): number {
  let h = 0x811c9dc5 ^ tokens.length;
  for (let i = 0; i < tokens.length; i++) h = Math.imul(h ^ (tokens[i] as number), 0x01000193);
  return h >>> 0;
}

/** The changed leaves of a config, as "optimizer.lr" → [before, after]. */
function changedLeaves(before: unknown, after: unknown, path = ""): Record<string, [unknown, unknown]> {
  const isObject = (v: unknown) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (isObject(before) && isObject(after)) {
    const out: Record<string, [unknown, unknown]> = {};
    const b = before as Record<string, unknown>;
    const a = after as Record<string, unknown>;
    for (const key of new Set([...Object.keys(b), ...Object.keys(a)])) {
      Object.assign(out, changedLeaves(b[key], a[key], path ? `${path}.${key}` : key));
    }
    return out;
  }
  return JSON.stringify(before) === JSON.stringify(after) ? {} : { [path]: [before ?? null, after ?? null] };
}

/**
 * Why this model's rollout logprobs are not proven equal to the training forward's, or undefined
 * when they are. Only the CUDA slot decoder is bit-identical, and it is not used for MLA models
 * (DeepSeek-V3, Moonlight: the generic decoder), dynamic rope, or when experts are recorded.
 */
/** A folder that must exist and hold `inside` (e.g. model.path and its config.json). */
function checkFolder(path: string, field: string, inside: string): void {
  if (!existsSync(path)) throw new UserError("NOT_FOUND", `${path}: no such folder`, field);
  if (!statSync(path).isDirectory())
    throw new UserError("NOT_FOUND", `${path} is a file, not a model folder`, field);
  if (!existsSync(join(path, inside))) {
    throw new UserError("NOT_FOUND", `${path} has no ${inside}: not an HF model folder`, field);
  }
}

function checkFile(path: string, field: string): void {
  if (!existsSync(path)) throw new UserError("NOT_FOUND", `${path}: no such file`, field);
  if (statSync(path).isDirectory())
    throw new UserError("BAD_ARGS", `${path} is a folder, not a data file`, field);
}

/**
 * Why this model's rollout logprobs are not proven equal to the training forward's, or undefined
 * when they are. Only the CUDA slot decoder is bit-identical, and it is not used for MLA models
 * (DeepSeek-V3, Moonlight: the generic decoder), dynamic rope, or when experts are recorded.
 */
function decoderNotExact(modelPath: string): string | undefined {
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(readFileSync(join(modelPath, "config.json"), "utf8")) as Record<string, unknown>;
  } catch (error) {
    return `its config.json cannot be read (${(error as Error).message})`;
  }
  if (c.kv_lora_rank !== undefined && c.kv_lora_rank !== null)
    return "MLA models generate on the generic decoder";
  const rope = c.rope_scaling as { type?: unknown; rope_type?: unknown } | null | undefined;
  if (rope && (rope.type === "dynamic" || rope.rope_type === "dynamic")) {
    return "dynamic rope generates on the generic decoder";
  }
  return undefined;
}

/**
 * Each response's values out of per-token outputs of packed micro-batches: plan[d][m] lists the
 * samples that replica d's micro-batch m packed (prompt + response each), outOf(d, m) its outputs
 * per predicted token; a response's values are those that predict its tokens.
 */
function responseValues(
  samples: readonly Sample[],
  plan: number[][][],
  outOf: (d: number, m: number) => { logprobs: Float32Array; entropy: Float32Array },
): { logprobs: Float32Array[]; entropy: Float32Array[] } {
  const logprobs: Float32Array[] = new Array(samples.length);
  const entropy: Float32Array[] = new Array(samples.length);
  plan.forEach((list, d) => {
    list.forEach((mb, m) => {
      const out = outOf(d, m);
      let at = 0;
      for (const i of mb) {
        const s = samples[i] as Sample;
        const from = at + s.prompt.length - 1;
        logprobs[i] = out.logprobs.slice(from, from + s.response.length);
        entropy[i] = out.entropy.slice(from, from + s.response.length);
        at += s.prompt.length + s.response.length - 1;
      }
    });
  });
  return { logprobs, entropy };
}

/** The least time between two writes of <runDir>/metrics.arrow (#persistMetrics). */
const metricsWriteIntervalMs = 1000;

/** How many sequences a step measures training/rollout_probs_diff_* on when old logprobs are not recomputed. */
const probsDiffSample = 8;

export class ExperimentRun {
  #config: ResolvedConfig;
  #kl: KlController | undefined;
  readonly runDir: string;
  readonly metrics = new MetricsLog();
  /** What the user should know about this run's start (checkpoints refused, folders cleaned). */
  readonly warnings: string[] = [];
  /** Steps completed. */
  step = 0;
  /** The step in progress (stages called so far), or the last completed one. */
  batch: StepBatch | undefined;
  /** The batches of the last `keepRollouts` completed steps; rollouts() turns one into a table on request. */
  readonly #history = new Map<number, StepBatch>();
  keepRollouts = 4;
  /** The run's ranks (config.parallel's layout) and its models on them, named uniquely per run. */
  readonly #ranks: RunRanks;
  readonly #actor: ModelRole;
  readonly #ref: ModelRole;
  /**
   * The rollout engine's copy of the actor under rollout.parallel's layout (its own mesh of the
   * same ranks), resharded from the actor at every sync; undefined: the actor generates itself.
   */
  #rollout: ModelRole | undefined;
  #rolloutLoaded = false;
  /** PPO's value model (algorithm.advantage "gae"), on the actor's rank. */
  readonly #critic: string;
  #stopRequested = false;
  /** The kernel's Interrupt: the step in progress stops at its next stage boundary (left in progress). */
  #stopAtStage = false;
  #snapshots = 0;
  #replaying = false;
  /** Per completed step of this branch: a digest of each response's tokens, and what hooks patched. */
  #stepRecords = new Map<number, { responses: number[]; patches: RecordedPatch[] }>();
  /** Patches of the step in progress. */
  #pendingPatches: RecordedPatch[] = [];
  /** set() calls of this branch, in order (the change log, changes.jsonl, has every branch's). */
  #changes: RecordedChange[] = [];
  #branches = 0;
  #busy: string | undefined;
  /** The metrics file's write queue (#persistMetrics). */
  #metricsWritten: Promise<void> = Promise.resolve();
  #metricsQueued = false;
  /** When (performance.now()) the next metrics.arrow write may start, and what starts a waiting one now. */
  #metricsNextWriteAt = 0;
  #metricsWriteNow: (() => void) | undefined;
  /** A flush is waiting: the queued write starts without waiting out the interval. */
  #metricsFlushAsked = false;
  #device = "cpu";
  #deviceName: string | undefined;
  #flopShape: ModelSpec | undefined;
  /** Held-out prompts (data.val), all of them validated in file order. */
  #valDataset: PromptDataset | undefined;
  /** The model's image processor and placeholder, when it is a vision-language model. */
  #images: ImageSupport | undefined;
  /** The last validation's generations (for the inspector) and the step it ran after. */
  lastValidation: { step: number; samples: Sample[]; metrics: Record<string, number> } | undefined;

  private constructor(
    config: ResolvedConfig,
    private readonly call: RankCall,
    ranks: RunRanks,
    private readonly tokenizer: Tokenizer,
    private readonly dataset: PromptDataset,
    private readonly rewards: RewardRunner,
    kl: KlController | undefined,
    readonly hooks: ExperimentHooks,
  ) {
    this.#config = config;
    this.#kl = kl;
    const tag = `${config.name}.${process.pid}.${++runCounter}`;
    this.#ranks = ranks;
    this.#actor = new ModelRole(`actor.${tag}`, ranks);
    this.#ref = new ModelRole(`ref.${tag}`, ranks);
    const r = config.rollout.parallel;
    if (r) {
      const layout = {
        tensor: r.tensor,
        data: r.data,
        context: 1,
        pipeline: 1,
        expert: 1,
        sequenceParallel: false,
      };
      // No relay for its replicas: the workers' relay groups are the training layout's.
      this.#rollout = new ModelRole(`rollout.${tag}`, new RunRanks(layout, call, ranks.callEach));
    }
    this.#critic = `critic.${tag}`;
    this.runDir = resolve(config.runDir);
    const shape = readFlopShape(config.model.path);
    if (typeof shape === "string") this.warnings.push(`perf/mfu/actor is not measured: ${shape}`);
    else this.#flopShape = shape;
  }

  /**
   * Builds the experiment: tokenizer and prompts on the controller, the actor (and the reference,
   * when KL is used) on rank 0, the optimizer. The config must be resolved (resolveConfig).
   */
  static async create(
    config: ResolvedConfig,
    call: RankCall,
    options: {
      hooks?: ExperimentHooks;
      device?: string;
      deviceName?: string;
      actorDir?: string;
      criticDir?: string;
      /**
       * The controller's fan-out (WorkerPool.callEach) and how many workers it has: a run with
       * parallel.gpus > 1 needs exactly that many, their process group set up (initProcessGroup).
       */
      callEach?: RankCallEach;
      workers?: number;
      /** Relay each replica's data through its first rank (RunRanks.relay); default false. */
      relay?: boolean;
    } = {},
  ): Promise<ExperimentRun> {
    const gpus = config.parallel.gpus;
    if (gpus > 1 && options.workers === undefined) {
      throw new UserError(
        "BAD_ARGS",
        `parallel.gpus: ${gpus} ranks need a controller with ${gpus} workers (tiller controller --cpu ${gpus}, or --gpus); this one runs in-process on one`,
        "parallel.gpus",
      );
    }
    if (gpus > 1 && options.workers !== gpus) {
      throw new UserError(
        "BAD_ARGS",
        `parallel.gpus: ${gpus}, but the controller has ${options.workers} workers; a run uses every rank of the process group`,
        "parallel.gpus",
      );
    }
    if (gpus > 1 && config.critic) {
      throw new UserError(
        "BAD_ARGS",
        `critic: PPO's value model trains on one rank; with parallel.gpus ${gpus} use a critic-free estimator (grpo, rloo, reinforce++, ...)`,
        "critic",
      );
    }
    if (config.parallel.expertTensor > 1) {
      throw new UserError(
        "BAD_ARGS",
        `parallel.expertTensor: ${config.parallel.expertTensor}: expert tensor parallelism is not in the engine; each expert runs whole on its expert rank (expertTensor 1, the DeepSeek-V3 recipe's setting)`,
        "parallel.expertTensor",
      );
    }
    if (config.parallel.virtualPipeline > 1) {
      throw new UserError(
        "BAD_ARGS",
        `parallel.virtualPipeline: ${config.parallel.virtualPipeline}: the engine runs one stage per pipeline rank (1F1B); interleaved stages are not in it yet`,
        "parallel.virtualPipeline",
      );
    }
    if (config.parallel.pipeline > 1 && config.rollout.routingReplay !== "off") {
      throw new UserError(
        "BAD_ARGS",
        "rollout.routingReplay: not under pipeline parallelism yet (each stage routes its own layers, so no rank records them all)",
        "rollout.routingReplay",
      );
    }
    checkFolder(config.model.path, "model.path", "config.json");
    config.data.train.forEach((file, i) => {
      checkFile(file, `data.train[${i}]`);
    });
    const tokenizer = Tokenizer.fromFolder(config.model.path);
    if (config.data.chatTemplate && !tokenizer.hasChatTemplate) {
      throw new Error(
        `data.chatTemplate: the tokenizer in ${config.model.path} has no chat template; set data.chatTemplate: false`,
      );
    }
    const images = imageSupport(config.model.path, tokenizer);
    if (images && config.critic) {
      throw new UserError("BAD_ARGS", "critic: not supported for vision-language models yet", "critic");
    }
    if (images && config.rollout.parallel) {
      throw new UserError(
        "BAD_ARGS",
        "rollout.parallel: a rollout layout of its own is not supported for vision-language models yet; leave it out (the rollout then uses the training layout)",
        "rollout.parallel",
      );
    }
    const encoder = new PromptEncoder(tokenizer, config.data.chatTemplate, images);
    const promptDataset = async (files: readonly string[], field: string, shuffle: boolean) => {
      const rows = (await Promise.all(files.map(readPromptRows))).flat();
      await encoder.prepare(rows, field);
      return new PromptDataset(rows, {
        applyChatTemplate: (messages, row) => encoder.encode(messages, row),
        maxPromptTokens: config.data.maxPromptTokens,
        seed: config.seed,
        shuffle,
      });
    };
    const valFiles = config.data.val ?? [];
    const valDataset = valFiles.length > 0 ? await promptDataset(valFiles, "data.val", false) : undefined;
    const dataset = await promptDataset(config.data.train, "data.train", config.data.shuffle).catch(
      (error: NodeJS.ErrnoException) => {
        // The files exist (checked above): what fails now is their content.
        throw error.code ? error : new UserError("BAD_DATA", error.message, "data.train");
      },
    );
    if (dataset.size < config.promptsPerStep) {
      throw new UserError(
        "BAD_ARGS",
        `promptsPerStep: ${config.promptsPerStep} is more than the ${dataset.size} prompts kept ` +
          `(${dataset.filteredOut} dropped as longer than data.maxPromptTokens = ${config.data.maxPromptTokens})`,
        "promptsPerStep",
      );
    }
    const klReward = config.algorithm.klReward;
    const kl = klReward
      ? klReward.adaptive
        ? new AdaptiveKlController({ initialCoefficient: klReward.coefficient, ...klReward.adaptive })
        : new FixedKlController(klReward.coefficient)
      : undefined;
    const rewards = new RewardRunner({
      ...(config.reward.fn ? { fn: config.reward.fn } : {}),
      workers: config.reward.workers,
      timeoutMs: config.reward.timeoutMs,
    });
    const p = config.parallel;
    const ranks = new RunRanks(
      {
        tensor: p.tensor,
        context: p.context,
        pipeline: p.pipeline,
        expert: p.expert,
        data: p.data,
        sequenceParallel: p.sequenceParallel,
        ...(p.firstStageLayers !== undefined ? { firstStageLayers: p.firstStageLayers } : {}),
        ...(p.lastStageLayers !== undefined ? { lastStageLayers: p.lastStageLayers } : {}),
      },
      call,
      options.callEach,
    );
    ranks.relay = options.relay ?? false;
    const run = new ExperimentRun(config, call, ranks, tokenizer, dataset, rewards, kl, options.hooks ?? {});
    run.#valDataset = valDataset;
    run.#images = images;
    run.#device = options.device ?? "cpu";
    run.#deviceName = options.deviceName;
    try {
      // One mesh per run, its process groups made once; every rank's models load under it.
      if (ranks.multiRank) await ranks.all("dist.mesh", { ...ranks.layout });
      if (run.#rollout) {
        const { tensor, data } = run.#rollout.ranks.layout;
        await ranks.all("dist.mesh", { tensor, data, key: "rollout" });
      }
      await run.#loadActor(options.actorDir ?? config.model.path);
      if (needsReference(config)) await run.#ref.load(config.model.path, run.#dtype);
      if (config.critic) await run.#loadCritic(options.criticDir ?? config.critic.path);
    } catch (error) {
      await run.close();
      throw error;
    }
    mkdirSync(run.runDir, { recursive: true });
    writeFileSync(join(run.runDir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
    for (const sub of ["checkpoints", "snapshots"])
      run.warnings.push(...removeStalePartials(join(run.runDir, sub)));
    for (const w of run.warnings) process.stderr.write(`tiller: ${config.name}: ${w}\n`);
    return run;
  }

  /**
   * Continues from a checkpoint folder (or a run folder: its newest complete checkpoint) as if the
   * run had never stopped: weights, optimizer, data position, KL coefficient, step and metrics.
   * `overrides` may change totalSteps and checkpoint settings only.
   */
  static async resume(
    checkpoint: string,
    call: RankCall,
    options: {
      hooks?: ExperimentHooks;
      device?: string;
      deviceName?: string;
      totalSteps?: number;
      /**
       * Another layout to continue in (the checkpoint holds whole tensors and the optimizer state
       * under single-device names, so any layout reads it): TP2×DP2 saved, one rank resumed.
       */
      parallel?: Record<string, unknown>;
      callEach?: RankCallEach;
      workers?: number;
      relay?: boolean;
    } = {},
  ): Promise<ExperimentRun> {
    const found = await findCheckpoint(checkpoint);
    const dir = found.dir;
    const state = JSON.parse(readFileSync(join(dir, "state.json"), "utf8")) as ExperimentState;
    // A copied run folder carries the original's runDir in state.json: new checkpoints and metrics
    // go where the run was resumed from, never back into the original.
    if (!found.runDir) {
      throw new UserError(
        "BAD_ARGS",
        `${dir} is not inside a run folder's checkpoints/ (it was saved by the run in ${state.config.runDir}); ` +
          "resume that run folder, or put the checkpoint under <run folder>/checkpoints/",
        "resume",
      );
    }
    const saved = {
      ...state.config,
      runDir: found.runDir,
      ...(options.totalSteps ? { totalSteps: options.totalSteps } : {}),
    };
    const config = options.parallel
      ? resolveConfig({ ...saved, parallel: options.parallel } as never)
      : saved;
    // The actor comes from the checkpoint; the tokenizer, prompts and reference from the original folder.
    const run = await ExperimentRun.create(config, call, {
      ...options,
      actorDir: join(dir, "model"),
      ...(config.critic ? { criticDir: join(dir, "critic") } : {}),
    });
    const before = run.warnings.length;
    if (resolve(state.config.runDir) !== found.runDir) {
      run.warnings.push(
        `resumed from ${found.runDir}, a copy of ${state.config.runDir}: writing into ${found.runDir}`,
      );
    }
    for (const r of found.refused) {
      run.warnings.push(`resumed from ${dir}, not the newer ${r.dir}: ${r.reason}`);
    }
    for (const w of run.warnings.slice(before)) process.stderr.write(`tiller: ${config.name}: ${w}\n`);
    try {
      await run.#restoreState(dir, state, { reloadActor: false });
    } catch (error) {
      await run.close();
      throw error;
    }
    return run;
  }

  /**
   * Brings the run back to a saved state (a checkpoint or a snapshot folder): weights, optimizer,
   * data position, KL coefficient, step, metrics (truncated there), settings.
   */
  async #restoreState(dir: string, state: ExperimentState, options: { reloadActor: boolean }): Promise<void> {
    if (options.reloadActor) {
      this.#config = { ...state.config, runDir: this.#config.runDir };
      writeFileSync(join(this.runDir, "config.json"), `${JSON.stringify(this.#config, null, 2)}\n`);
      await this.#actor.everywhere("model.free", {});
      await this.#loadActor(join(dir, "model"));
      // The rollout copy follows the weights just loaded.
      if (this.#rollout) await this.#reshardRollout();
    }
    await this.#actor.everywhere("model.loadOptimizer", { file: join(dir, "optimizer.safetensors") });
    if (this.#config.critic) {
      if (options.reloadActor) {
        await this.#call("critic.free", { name: this.#critic });
        await this.#loadCritic(join(dir, "critic"));
      }
      await this.#call("critic.loadOptimizer", {
        name: this.#critic,
        file: join(dir, "critic-optimizer.safetensors"),
      });
    }
    this.dataset.restore(state.dataset);
    if (this.#kl instanceof AdaptiveKlController && state.klCoefficient !== null) {
      // The adaptive controller's only state is its coefficient.
      this.#kl = new AdaptiveKlController({
        initialCoefficient: state.klCoefficient,
        targetKl: this.#kl.targetKl,
        horizonResponses: this.#kl.horizonResponses,
      });
    }
    if (options.reloadActor && !this.#replaying && this.step > state.step) await this.#keepBranch(state.step);
    this.step = state.step;
    this.batch = undefined;
    this.#pendingPatches = [];
    for (const k of [...this.#stepRecords.keys()]) if (k > state.step) this.#stepRecords.delete(k);
    this.#changes = this.#changes.filter((c) => c.step < state.step);
    const saved = await MetricsLog.readFile(join(dir, "metrics.arrow"));
    this.metrics.truncate(-1);
    for (const row of saved.rows) this.metrics.append(row);
    this.metrics.truncate(state.step);
    for (const k of [...this.#history.keys()]) if (k > state.step) this.#history.delete(k);
    void this.#persistMetrics();
    await this.flushMetrics();
  }

  /**
   * Before a restore rewinds the metrics: the branch being left, as `branches/branch-N.arrow` (its
   * rows from 1 to now), and a line in the change log; `notebook.compare(runDir)` shows them all.
   */
  async #keepBranch(toStep: number): Promise<void> {
    const dir = join(this.runDir, "branches");
    mkdirSync(dir, { recursive: true });
    const name = `branch-${String(++this.#branches).padStart(3, "0")}`;
    await this.metrics.writeFile(join(dir, `${name}.arrow`));
    this.#logChange({ event: "restore", step: this.step, toStep, branch: name });
  }

  /** One line of `<runDir>/changes.jsonl`: what changed at which step (set, restore). */
  #logChange(entry: Record<string, unknown>): void {
    mkdirSync(this.runDir, { recursive: true });
    appendFileSync(
      join(this.runDir, "changes.jsonl"),
      `${JSON.stringify({ time: new Date().toISOString(), ...entry })}\n`,
    );
  }

  async #call<C extends WorkerCommand>(
    command: C,
    args: WorkerCommandArgs<C>,
  ): Promise<WorkerCommandResults[C]> {
    return this.call(0, command, args);
  }

  get #dtype(): "float32" | "bfloat16" | "float16" {
    const d = this.#config.model.dtype;
    return d === "auto" ? (this.#device.startsWith("cuda") ? "bfloat16" : "float32") : d;
  }

  async #loadActor(dir: string): Promise<void> {
    const loaded = await this.#actor.load(dir, this.#dtype, {
      ...(this.#config.model.freezeVisionTower ? { freezeVision: true } : {}),
    });
    if (this.#rollout && !this.#rolloutLoaded) {
      // The same folder under the rollout's mesh: its slices are the actor's weights as they are.
      await this.#rollout.load(dir, this.#dtype, { mesh: "rollout" });
      this.#rolloutLoaded = true;
    }
    this.#device = loaded.device;
    const { lr, beta1, beta2, eps, weightDecay, schedule, maxGradNorm } = this.#config.optimizer;
    await this.#actor.everywhere("model.initOptimizer", {
      options: {
        lr,
        weightDecay,
        maxGradNorm,
        noDecay: "biases-and-norms",
        ...(beta1 !== undefined ? { beta1 } : {}),
        ...(beta2 !== undefined ? { beta2 } : {}),
        ...(eps !== undefined ? { eps } : {}),
        ...(schedule ? { schedule } : {}),
      },
    });
    if (this.#config.recompute.granularity !== "none") {
      await this.#actor.everywhere("model.setTraining", { recompute: this.#config.recompute });
    }
    // Offloaded from the start: the first rollout has the device to itself.
    if (this.#config.offload.optimizer) await this.#actor.everywhere("model.offload", {});
  }

  /** The value model from an HF folder (the actor's, or a checkpoint's critic/) with its AdamW. */
  async #loadCritic(dir: string): Promise<void> {
    const c = this.#config.critic;
    if (!c) return;
    await this.#call("critic.load", {
      name: this.#critic,
      dir,
      dtype: this.#dtype,
      seed: this.#config.seed,
      optimizer: {
        lr: c.lr,
        weightDecay: c.weightDecay,
        maxGradNorm: c.maxGradNorm,
        noDecay: "biases-and-norms",
      },
    });
  }

  /** Frees the models on the workers and stops the reward threads. */
  async close(): Promise<void> {
    await this.flushMetrics();
    await this.rewards.close();
    const roles = [this.#actor, ...(needsReference(this.#config) ? [this.#ref] : [])];
    if (this.#rollout) roles.push(this.#rollout);
    for (const role of roles) {
      try {
        await role.everywhere("model.free", {});
      } catch (error) {
        // A lost worker holds nothing, and a create that failed early loaded nothing: both are fine.
        const e = error as { code?: string; body?: { code?: string } };
        const code = e.body?.code ?? e.code;
        if (
          code !== "WORKER_LOST" &&
          code !== "NO_WORKERS" &&
          code !== "NOT_FOUND" &&
          code !== "SHUTTING_DOWN"
        ) {
          process.stderr.write(
            `tiller: ${this.#config.name}: freeing ${role.name} failed: ${(error as Error).message}\n`,
          );
        }
      }
    }
    if (this.#config.critic) {
      try {
        await this.#call("critic.free", { name: this.#critic });
      } catch {
        // as above
      }
    }
  }

  /** The settings in force (set() changes some between steps). */
  get config(): ResolvedConfig {
    return this.#config;
  }

  get datasetSize(): number {
    return this.dataset.size;
  }

  get promptsFilteredOut(): number {
    return this.dataset.filteredOut;
  }

  get device(): string {
    return this.#device;
  }

  get busy(): string | undefined {
    return this.#busy;
  }

  /**
   * Asks run() to stop after the step in progress; with `atStage` (the kernel's Interrupt) a step
   * run here stops at its next stage boundary too, left in progress (the stages can finish it, or
   * discard() drops it).
   */
  requestStop(atStage = false): void {
    this.#stopRequested = true;
    if (atStage) this.#stopAtStage = true;
  }

  /** Runs `fn` as the only operation in progress; a second one is refused, naming the first. */
  /**
   * Writes <runDir>/metrics.arrow with the rows as they are when the write starts, after the
   * current turn of the event loop and at most once per metricsWriteIntervalMs: writes asked for
   * while one waits coalesce into it, and they run in order. The promise settles when the last
   * asked-for write is on disk. A write encodes the whole table on the main thread (~2–6 ms at a
   * hundred columns), which on a small CPU stalls the engine's threads in the next step's rollout;
   * a step every few milliseconds would pay it every step. flushMetrics() starts a waiting write at once.
   */
  #persistMetrics(): Promise<void> {
    if (!this.#metricsQueued) {
      this.#metricsQueued = true;
      this.#metricsWritten = this.#metricsWritten
        .then(
          () =>
            new Promise<void>((resolve) => {
              const wait = this.#metricsFlushAsked ? 0 : this.#metricsNextWriteAt - performance.now();
              const start = () => {
                clearTimeout(timer);
                this.#metricsWriteNow = undefined;
                resolve();
              };
              const timer = setTimeout(start, Math.max(wait, 0));
              this.#metricsWriteNow = start;
            }),
        )
        .then(() => {
          this.#metricsQueued = false;
          this.#metricsFlushAsked = false;
          this.#metricsNextWriteAt = performance.now() + metricsWriteIntervalMs;
          return this.metrics.writeFile(join(this.runDir, "metrics.arrow"));
        })
        .catch((error: unknown) => {
          process.stderr.write(
            `tiller: ${this.#config.name}: writing metrics.arrow failed: ${(error as Error).message}\n`,
          );
        });
    }
    return this.#metricsWritten;
  }

  /** Every metrics row so far is in <runDir>/metrics.arrow once this settles (a waiting write starts now). */
  flushMetrics(): Promise<void> {
    if (this.#metricsQueued) this.#metricsFlushAsked = true;
    this.#metricsWriteNow?.();
    return this.#metricsWritten;
  }

  async exclusive<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.#busy) {
      throw new UserError("BUSY", `experiment is busy with ${this.#busy}; wait for it (or stop())`);
    }
    this.#busy = what;
    // A stop asks the operation in progress to end; one that came while nothing ran is dropped.
    this.#stopRequested = false;
    this.#stopAtStage = false;
    try {
      const result = await fn();
      // What a client is told is done is on disk.
      await this.flushMetrics();
      return result;
    } finally {
      this.#busy = undefined;
    }
  }

  #progress(stage: ProgressEvent["stage"], started: number, extra: Partial<ProgressEvent> = {}): void {
    this.hooks.progress?.({
      step: this.step,
      totalSteps: this.#config.totalSteps,
      stage,
      elapsedS: (performance.now() - started) / 1000,
      ...extra,
    });
  }

  #current(stage: StageName): StepBatch {
    const b = this.batch;
    if (!b || b.step !== this.step + 1 || b.stagesDone.includes("sync")) {
      throw new Error(`${stage}: no step in progress; call rollout() first`);
    }
    const order = stageNames.indexOf(stage);
    const missing = stageNames.slice(0, order).filter((s) => !b.stagesDone.includes(s) && s !== "filter");
    if (missing.length > 0) throw new Error(`${stage}: run ${missing.join(", ")} first`);
    if (b.stagesDone.includes(stage)) throw new Error(`${stage}: already done for step ${b.step}`);
    return b;
  }

  async #timed<T>(batch: StepBatch, stage: StageName, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    const result = await fn();
    batch.timings[timingKey[stage]] =
      (batch.timings[timingKey[stage]] ?? 0) + (performance.now() - t0) / 1000;
    batch.stagesDone.push(stage);
    return result;
  }

  /** Whether the actor routes tokens (an MoE model, or a shape the planner could not read). */
  get #routed(): boolean {
    return this.#flopShape ? this.#flopShape.moe !== undefined : true;
  }

  /** The model that generates: the rollout's copy under its own layout, or the actor itself. */
  get #generator(): ModelRole {
    return this.#rollout ?? this.#actor;
  }

  /**
   * The actor's weights into the rollout's copy (every rank together): each rank keeps what it
   * holds and receives what it lacks once. The step's metrics: the busiest rank's time, the bytes
   * received by all ranks, and their rate.
   */
  async #reshardRollout(): Promise<Record<string, number>> {
    const rollout = this.#rollout as ModelRole;
    const stats = await rollout.reshardFrom(this.#actor, this.#config.rollout.reshard);
    const seconds = Math.max(...stats.map((s) => s.seconds));
    const bytes = stats.reduce((n, s) => n + s.bytesReceived, 0);
    return {
      "timing_s/reshard": seconds,
      "perf/reshard_bytes": bytes,
      ...(seconds > 0 ? { "perf/reshard_gbps": bytes / seconds / 1e9 } : {}),
      ...(this.#config.rollout.reshard.verify
        ? { "perf/reshard_verified_regions": stats.reduce((n, s) => n + s.verified, 0) }
        : {}),
    };
  }

  /** Samples `samplesPerPrompt` responses for each prompt; greedy ones too for ReMax. */
  async #generate(prompts: PromptItem[], step: number, round: number): Promise<Sample[]> {
    const { samplesPerPrompt, maxResponseTokens, temperature, topP, topK } = this.#config.rollout;
    const ids = prompts.map((p) => Int32Array.from(p.promptTokenIds));
    const repeated = ids.flatMap((p) => Array.from({ length: samplesPerPrompt }, () => p));
    const seed = mixSeed(mixSeed(this.#config.seed, step), round);
    const pixels = await promptImages(prompts, this.#images);
    const generations = await this.#generator.generate(
      repeated,
      {
        maxNewTokens: maxResponseTokens,
        temperature,
        topP,
        topK,
        stopTokenIds: this.tokenizer.stopTokenIds,
        seed,
        ...(this.#config.rollout.routingReplay !== "off" ? { recordExperts: true } : {}),
      },
      pixels.flatMap((x) => Array.from({ length: samplesPerPrompt }, () => x)),
    );
    const sampleOf = (
      g: (typeof generations)[number],
      prompt: Int32Array,
      item: PromptItem,
      group: number,
    ): Sample => ({
      uid: `${step}.${round}.${group}`,
      round,
      prompt,
      response: g.tokens,
      rolloutLogprobs: g.logprobs,
      finishReason: g.finishReason,
      ...(g.experts && g.experts.length > 0 ? { experts: g.experts } : {}),
      dataSource: item.row.dataSource,
      groundTruth: item.row.rewardModel.groundTruth,
      extra: item.row.extraInfo,
      ...(pixels[group] ? { pixels: pixels[group], images: item.row.images } : {}),
    });
    const samples = generations.map((g, i) => {
      const group = Math.floor(i / samplesPerPrompt);
      return sampleOf(g, repeated[i] as Int32Array, prompts[group] as PromptItem, group);
    });
    if (this.#config.algorithm.advantage === "remax") {
      const greedy = await this.#generator.generate(
        ids,
        { maxNewTokens: maxResponseTokens, temperature: 0, stopTokenIds: this.tokenizer.stopTokenIds },
        pixels,
      );
      // The greedy responses are scored like the sampled ones; their verifier score is the baseline.
      const baselines = greedy.map((g, p) => sampleOf(g, ids[p] as Int32Array, prompts[p] as PromptItem, p));
      await this.#scoreSamples(baselines);
      samples.forEach((s, i) => {
        s.baselineScore = baselines[Math.floor(i / samplesPerPrompt)]?.score ?? 0;
      });
    }
    return samples;
  }

  // ---- the stages ------------------------------------------------------------------------------

  /** Starts a step: the next prompts from the dataset, `samplesPerPrompt` responses each. */
  async rollout(): Promise<StepBatch> {
    if (this.batch && this.batch.step === this.step + 1 && !this.batch.stagesDone.includes("sync")) {
      throw new Error(
        `rollout: step ${this.batch.step} is in progress (done: ${this.batch.stagesDone.join(", ")}); finish it with step(), or discard()`,
      );
    }
    if (
      this.#valDataset &&
      this.#config.validation?.beforeTraining &&
      this.step === 0 &&
      this.metrics.length === 0 &&
      !this.#replaying
    ) {
      // verl's val_before_train: a row at step 0 before the first update.
      const t0 = performance.now();
      const { metrics } = await this.#validateAt(0);
      this.metrics.append({ step: 0, ...metrics, "timing_s/testing": (performance.now() - t0) / 1000 });
      void this.#persistMetrics();
    }
    const batch: StepBatch = {
      step: this.step + 1,
      samples: [],
      rounds: 0,
      stagesDone: [],
      timings: {},
      metrics: {},
    };
    this.batch = batch;
    // The rollout's own copy generates: the actor's parameters can wait on the host (offload.params).
    if (this.#config.offload.params) await this.#moveState(batch, "model.offload", "parameters");
    await this.#timed(batch, "rollout", async () => {
      batch.samples = await this.#generate(
        this.dataset.nextBatch(this.#config.promptsPerStep),
        batch.step,
        0,
      );
      batch.rounds = 1;
    });
    // The rollout's KV cache as the engine allocated it, on the busiest replica.
    batch.metrics["perf/memory/kv_cache_bytes"] = this.#generator.lastKvCacheBytes;
    return batch;
  }

  /** Drops the step in progress (its prompts stay consumed, as a crash would leave them). */
  discard(): void {
    if (this.batch && !this.batch.stagesDone.includes("sync")) this.batch = undefined;
    this.#pendingPatches = [];
  }

  async #scoreSamples(samples: Sample[]): Promise<void> {
    const pending = samples.filter((s) => s.score === undefined);
    const outcomes = await this.rewards.score(
      pending.map((s) => {
        s.promptText = this.tokenizer.decode(Array.from(s.prompt));
        s.responseText = this.tokenizer.decode(Array.from(s.response), { skipSpecialTokens: true });
        return {
          prompt: s.promptText,
          response: s.responseText,
          groundTruth: s.groundTruth,
          dataSource: s.dataSource,
          extra: s.extra,
        };
      }),
    );
    const overlong = this.#config.algorithm.overlong;
    pending.forEach((s, i) => {
      const o = outcomes[i] as (typeof outcomes)[number];
      s.score = o.score;
      s.rewardStatus = o.status;
      if (o.reason !== undefined) s.rewardReason = o.reason;
      if (typeof o.metrics.acc === "number" || typeof o.metrics.acc === "boolean")
        s.acc = Number(o.metrics.acc);
      if (o.metrics.pred !== undefined && o.metrics.pred !== null) s.pred = String(o.metrics.pred);
      s.rewardExtras = o.metrics;
      s.shapedScore = overlong
        ? o.score +
          overlongPenalty(s.response.length, {
            maxResponseTokens: this.#config.rollout.maxResponseTokens,
            ...overlong,
          })
        : o.score;
    });
  }

  /** Scores every response with the reward function (off the main thread), then overlong shaping. */
  async score(): Promise<StepBatch> {
    const batch = this.#current("score");
    await this.#timed(batch, "score", () => this.#scoreSamples(batch.samples));
    return batch;
  }

  /**
   * DAPO dynamic sampling: keeps groups whose metric has a spread, generating (and scoring) more
   * rounds until the step has promptsPerStep groups, at most maxGenerationRounds rounds.
   * Without dynamic sampling the batch passes as it is.
   */
  async filter(): Promise<StepBatch> {
    const batch = this.#current("filter");
    const ds = this.#config.algorithm.dynamicSampling;
    await this.#timed(batch, "filter", async () => {
      if (!ds) return;
      const acc = new DynamicSamplingBatch({
        promptsPerStep: this.#config.promptsPerStep,
        maxGenerationRounds: ds.maxGenerationRounds,
      });
      const metricOf = (s: Sample) => {
        if (ds.metric !== "acc") return s.shapedScore ?? 0;
        if (s.acc !== undefined) return s.acc;
        // A failed reward call scores 0 and is counted with the reward metrics; so is its acc.
        if (s.rewardStatus !== "ok") return 0;
        throw new UserError(
          "BAD_ARGS",
          `"acc", but the reward function returned no acc for sample ${s.uid} (return {score, acc}, or use metric: "score")`,
          "algorithm.dynamicSampling.metric",
        );
      };
      let round = batch.samples;
      const all = [...round];
      let dropped = 0;
      for (;;) {
        const result = acc.addRound(
          Float64Array.from(round, metricOf),
          round.map((s) => s.uid),
        );
        dropped += result.droppedGroupCount;
        if (acc.isComplete) break;
        // Another round: fresh prompts, generated and scored (timed under gen/reward too).
        const t0 = performance.now();
        round = await this.#generate(
          this.dataset.nextBatch(this.#config.promptsPerStep),
          batch.step,
          batch.rounds,
        );
        batch.rounds++;
        const t1 = performance.now();
        await this.#scoreSamples(round);
        batch.timings["timing_s/gen"] = (batch.timings["timing_s/gen"] ?? 0) + (t1 - t0) / 1000;
        batch.timings["timing_s/reward"] =
          (batch.timings["timing_s/reward"] ?? 0) + (performance.now() - t1) / 1000;
        all.push(...round);
      }
      const keep = new Set(acc.groups().map((g) => g.groupId));
      batch.samples = all.filter((s) => keep.has(s.uid));
      batch.metrics["train/dropped_groups"] = dropped;
    });
    batch.metrics["train/num_gen_batches"] = batch.rounds;
    return batch;
  }

  #packed(samples: Sample[]): { tokens: Int32Array; cuSeqlens: Int32Array } {
    return packSamples(samples);
  }

  /** The images of these sequences (or prompts), packed as their tokens are; nothing when none has any. */
  #imagesOf(list: readonly (ImageInputs | undefined)[]): { images: ImageInputs } | Record<string, never> {
    const images = concatImages(list);
    return images ? { images } : {};
  }

  /** The recorded experts of these sequences, packed as the tokens are, when the actor replays them. */
  #routedExperts(role: ModelRole, samples: Sample[]): { routedExperts: Int32Array } | Record<string, never> {
    if (role !== this.#actor || this.#config.rollout.routingReplay !== "replay") return {};
    const missing = samples.filter((s) => !s.experts).length;
    if (missing > 0) {
      // Replaying some sequences and routing others afresh would train on a mismatch silently.
      throw new Error(
        `rollout.routingReplay: "replay", but ${missing} of ${samples.length} sequences carry no recorded experts`,
      );
    }
    return {
      routedExperts: concat(
        samples.map((s) => s.experts as Int32Array),
        Int32Array,
      ) as Int32Array,
    };
  }

  /** Logprobs (and entropy) of each response under a model, in micro-batches of the token budget. */
  async #responseLogprobs(
    role: ModelRole,
    samples: Sample[],
  ): Promise<{ logprobs: Float32Array[]; entropy: Float32Array[] }> {
    const micro = this.#microBatches(samples);
    const replies = await role.logprobs(
      micro.map((list) =>
        list.map((mb) => {
          const chosen = mb.map((i) => samples[i] as Sample);
          return {
            ...this.#packed(chosen),
            ...this.#routedExperts(role, chosen),
            ...this.#imagesOf(chosen.map((s) => s.pixels)),
          } satisfies PackedSequences;
        }),
      ),
      this.#config.rollout.temperature,
    );
    return responseValues(samples, micro, (d, m) => replies[d]?.[m] as (typeof replies)[number][number]);
  }

  /**
   * On-policy: each response's old logprobs and entropy from the update's forward (replica d's
   * micro-batches as `plan[d]` packed them), then the old_logprobs stage's metrics over all of them.
   */
  #oldLogprobsFromForward(
    batch: StepBatch,
    samples: Sample[],
    plan: number[][][],
    forwardPerReplica: { logprobs: Float32Array; entropy: Float32Array }[][],
  ): void {
    const { logprobs, entropy } = responseValues(samples, plan, (d, m) => {
      const out = forwardPerReplica[d]?.[m];
      if (!out)
        throw new Error(`update: replica ${d} sent no forward logprobs for micro-batch ${m} (on-policy)`);
      return out;
    });
    samples.forEach((s, i) => {
      s.oldLogprobs = logprobs[i];
      s.entropy = entropy[i];
    });
    this.#oldLogprobMetrics(batch, samples, logprobs);
  }

  /**
   * Sequences (indices into `samples`) per data-parallel replica, balanced by Karmarkar–Karp on
   * token counts (equal sequence counts per replica when they divide), packed into micro-batches
   * of at most tokensPerMicroBatch tokens; empty micro-batches dropped. One replica: one list.
   */
  /** A micro-batch's token budget: per rank, so context parallelism (each rank holding 1/context of every sequence) multiplies it. */
  get #microBatchTokens(): number {
    return this.#config.tokensPerMicroBatch * this.#ranks.layout.context;
  }

  #microBatches(samples: Sample[]): number[][][] {
    const replicas = this.#ranks.layout.data;
    const plan = planMicroBatches(
      samples.map((s) => s.prompt.length + s.response.length),
      {
        tokensPerMicroBatch: this.#microBatchTokens,
        dataParallelRanks: replicas,
        equalSequencesPerRank: replicas > 1 && samples.length % replicas === 0,
        minMicroBatches: this.#ranks.layout.pipeline,
      },
    );
    return plan.ranks.map((r) => r.microBatches.filter((mb) => mb.length > 0));
  }

  /**
   * Whether old logprobs are recomputed (verl always does). "auto" skips the pass only where the
   * rollout's logprobs are proven bit-identical to the training forward: the CUDA slot decoder in
   * bf16, routing not recorded, a model that decoder serves (see decoderNotExact).
   */
  get recomputesOldLogprobs(): boolean {
    const correction = this.#config.algorithm.rolloutCorrection;
    if (correction?.bypassMode) return false;
    if (correction) return true;
    const r = this.#config.algorithm.recomputeOldLogprobs;
    if (r !== "auto") return r;
    return !(
      this.#device.startsWith("cuda") &&
      this.#dtype === "bfloat16" &&
      this.#config.rollout.routingReplay === "off" &&
      decoderNotExact(this.#config.model.path) === undefined
    );
  }

  /**
   * Whether old logprobs can come from the update's own forward instead of a pass of their own:
   * "auto", on-policy (one epoch over one mini-batch, so the update's forward runs at the weights
   * old logprobs are measured at: old = its logprobs, detached, a ratio of exactly 1, as verl's and
   * TRL's updates take them then), nothing needing them before the update (KL in the reward, rollout
   * correction), and whole sequences on each rank (no context parallelism). The CUDA decoder's exact
   * rollout logprobs keep their own path.
   */
  get #oldLogprobsFromUpdate(): boolean {
    const c = this.#config;
    return (
      c.algorithm.recomputeOldLogprobs === "auto" &&
      c.algorithm.rolloutCorrection === undefined &&
      c.algorithm.klReward === undefined &&
      c.epochsPerStep === 1 &&
      c.miniBatchesPerStep === 1 &&
      this.#ranks.layout.context === 1 &&
      this.recomputesOldLogprobs
    );
  }

  /**
   * Old logprobs: the actor's, before this step's updates. The rollout's own logprobs where they
   * are exact, else a training forward: this stage's own, or, on-policy (#oldLogprobsFromUpdate),
   * the update's, which fills them and this stage's metrics in (the same values: the same forward
   * at the same weights). training/rollout_probs_diff_* compares them with the rollout's on every
   * sequence when recomputed, and on a sample of probsDiffSample sequences when not (so a mismatch
   * never goes unseen); training/rollout_probs_diff_sequences says how many were compared.
   */
  async oldLogprobs(): Promise<StepBatch> {
    const batch = this.#current("old_logprobs");
    // The actor's parameters, away during the rollout (offload.params), are back for its passes.
    if (this.#config.offload.params) await this.#moveState(batch, "model.onload", "parameters");
    await this.#timed(batch, "old_logprobs", async () => {
      if (this.#oldLogprobsFromUpdate) {
        batch.oldLogprobsFromUpdate = true;
        return;
      }
      await this.#measureOldLogprobs(batch);
    });
    return batch;
  }

  /** The old-logprob pass (or, with exact rollout logprobs, its sample) and its metrics. */
  async #measureOldLogprobs(batch: StepBatch): Promise<void> {
    const recompute = this.recomputesOldLogprobs;
    const n = batch.samples.length;
    const step = recompute ? 1 : Math.max(Math.floor(n / probsDiffSample), 1);
    const measured = batch.samples.filter((_, i) => i % step === 0).slice(0, recompute ? n : probsDiffSample);
    const { logprobs, entropy } = await this.#responseLogprobs(this.#actor, measured);
    if (recompute) {
      measured.forEach((s, i) => {
        s.oldLogprobs = logprobs[i];
        s.entropy = entropy[i];
      });
    } else {
      for (const s of batch.samples) s.oldLogprobs = s.rolloutLogprobs;
    }
    this.#oldLogprobMetrics(batch, measured, logprobs);
  }

  /** training/rollout_probs_diff_* of measured sequences' logprobs against the rollout's; the rollout correction. */
  #oldLogprobMetrics(batch: StepBatch, measured: Sample[], logprobs: Float32Array[]): void {
    let max = 0;
    let sum = 0;
    let tokens = 0;
    measured.forEach((s, i) => {
      const lp = logprobs[i] as Float32Array;
      for (let t = 0; t < lp.length; t++) {
        const d = Math.abs(Math.exp(lp[t] as number) - Math.exp(s.rolloutLogprobs[t] as number));
        if (d > max) max = d;
        sum += d;
        tokens++;
      }
    });
    batch.metrics["training/rollout_probs_diff_max"] = max;
    batch.metrics["training/rollout_probs_diff_mean"] = tokens ? sum / tokens : 0;
    batch.metrics["training/rollout_probs_diff_sequences"] = measured.length;
    this.#rolloutCorrection(batch);
  }

  /**
   * verl's decoupled rollout correction: IS weights and rejection masks from the old and rollout
   * logprobs, kept on the samples for the update, and the rollout_corr/ metrics (the off-policy
   * ones whenever both logprobs exist, as verl).
   */
  #rolloutCorrection(batch: StepBatch): void {
    const samples = batch.samples.filter((s) => s.response.length > 0);
    if (samples.length === 0) return;
    const old = samples.map((s) => s.oldLogprobs as Float32Array);
    const rollout = samples.map((s) => s.rolloutLogprobs);
    const masks = samples.map((s) => new Float32Array(s.response.length).fill(1));
    const config = this.#config.algorithm.rolloutCorrection;
    if (!config) {
      for (const [k, v] of Object.entries(offPolicyMetrics(old, rollout, masks))) {
        batch.metrics[`rollout_corr/${k}`] = v;
      }
      return;
    }
    const r = rolloutCorrection(old, rollout, masks, config);
    samples.forEach((s, i) => {
      if (r.weights) s.rolloutIsWeights = Float32Array.from(r.weights[i] as Float64Array);
      if (config.rejection.length > 0) s.lossMask = Float32Array.from(r.mask[i] as Float64Array);
    });
    Object.assign(batch.metrics, r.metrics);
  }

  /** Reference logprobs, when KL (in the reward or as a loss) is used; otherwise nothing to do. */
  async ref(): Promise<StepBatch> {
    const batch = this.#current("ref");
    await this.#timed(batch, "ref", async () => {
      if (!needsReference(this.#config)) return;
      const { logprobs } = await this.#responseLogprobs(this.#ref, batch.samples);
      batch.samples.forEach((s, i) => {
        s.refLogprobs = logprobs[i];
      });
    });
    return batch;
  }

  /** The KL penalty in the reward (if any), then the advantage estimator, per response token. */
  async advantages(): Promise<StepBatch> {
    const batch = this.#current("advantages");
    await this.#timed(batch, "advantages", async () => {
      const samples = batch.samples;
      const klReward = this.#config.algorithm.klReward;
      let scores = Float64Array.from(samples, (s) => s.shapedScore ?? 0);
      if (klReward && this.#kl) {
        const beta = this.#kl.coefficient;
        let klSum = 0;
        for (const s of samples) {
          const kl = klPerToken(
            s.oldLogprobs as Float32Array,
            s.refLogprobs as Float32Array,
            klReward.estimator,
          );
          const rewards = new Float64Array(s.response.length);
          for (let t = 0; t < rewards.length; t++) rewards[t] = -beta * (kl[t] as number);
          if (rewards.length > 0) rewards[rewards.length - 1] += s.shapedScore ?? 0;
          s.tokenRewards = rewards;
          let k = 0;
          for (const v of kl) k += v;
          klSum += kl.length ? k / kl.length : 0;
        }
        const meanKl = samples.length ? klSum / samples.length : 0;
        this.#kl.update(meanKl, samples.length);
        batch.metrics["actor/reward_kl_penalty"] = meanKl;
        batch.metrics["actor/reward_kl_penalty_coeff"] = beta;
        scores = Float64Array.from(samples, (s) =>
          (s.tokenRewards as Float64Array).reduce((a, b) => a + b, 0),
        );
      }
      const lengths = Int32Array.from(samples, (s) => s.response.length);
      const uids = samples.map((s) => s.uid);
      const perToken = (values: Float64Array) =>
        samples.map((s, i) => new Float32Array(s.response.length).fill(values[i] as number));
      let advantages: Float32Array[];
      switch (this.#config.algorithm.advantage) {
        case "grpo":
          advantages = perToken(grpoAdvantages(scores, uids));
          break;
        case "dr-grpo":
          advantages = perToken(grpoAdvantages(scores, uids, { normByStd: false }));
          break;
        case "rloo":
          advantages = perToken(rlooAdvantages(scores, uids));
          break;
        case "remax":
          advantages = perToken(
            remaxAdvantages(
              scores,
              Float64Array.from(samples, (s) => s.baselineScore ?? 0),
            ),
          );
          break;
        case "reinforce++-baseline":
          advantages = perToken(reinforcePlusPlusBaselineAdvantages(scores, uids, lengths));
          break;
        case "reinforce++":
          advantages = reinforcePlusPlusTokenAdvantages(
            samples.map((s) => s.tokenRewards ?? outcomeTokenRewards(s)),
            this.#config.algorithm.gamma,
          ).map((a) => Float32Array.from(a));
          break;
        case "grpo_passk":
          advantages = perToken(grpoPassKAdvantages(scores, uids));
          break;
        case "opo":
          advantages = perToken(opoAdvantages(scores, uids, lengths));
          break;
        case "gpg":
          advantages = perToken(gpgAdvantages(scores, uids));
          break;
        case "gae": {
          const t0 = performance.now();
          const values = await this.#criticValues(samples);
          batch.timings["timing_s/values"] = (performance.now() - t0) / 1000;
          const scored = samples.filter((s) => s.response.length > 0);
          const gae = gaeAdvantages(
            scored.map((s) => s.tokenRewards ?? outcomeTokenRewards(s)),
            scored.map((s) => values.get(s) as Float32Array),
            this.#config.algorithm.gamma,
            this.#config.algorithm.lam,
          );
          scored.forEach((s, i) => {
            s.values = values.get(s);
            s.returns = Float32Array.from(gae.returns[i] as Float64Array);
          });
          const byScored = new Map(
            scored.map((s, i) => [s, Float32Array.from(gae.advantages[i] as Float64Array)]),
          );
          advantages = samples.map((s) => byScored.get(s) ?? new Float32Array(0));
          break;
        }
      }
      samples.forEach((s, i) => {
        s.advantages = advantages[i];
      });
    });
    return batch;
  }

  /** The critic's value before each response token, packed into micro-batches as the logprobs are. */
  async #criticValues(samples: Sample[]): Promise<Map<Sample, Float32Array>> {
    const withResponse = samples.filter((s) => s.response.length > 0);
    const plan = planMicroBatches(
      withResponse.map((s) => s.prompt.length + s.response.length),
      { tokensPerMicroBatch: this.#microBatchTokens, dataParallelRanks: 1 },
    );
    const out = new Map<Sample, Float32Array>();
    for (const micro of (plan.ranks[0] as (typeof plan.ranks)[number]).microBatches) {
      if (micro.length === 0) continue;
      const chosen = micro.map((i) => withResponse[i] as Sample);
      const { values } = await this.#call("critic.values", { name: this.#critic, ...this.#packed(chosen) });
      let at = 0;
      for (const s of chosen) {
        const from = at + s.prompt.length - 1;
        out.set(s, values.slice(from, from + s.response.length));
        at += s.prompt.length + s.response.length - 1;
      }
    }
    return out;
  }

  /** One critic update on a mini-batch (verl's update_critic): the clipped value loss, then AdamW. */
  async #criticUpdate(mini: Sample[], tokens: number): Promise<WorkerCommandResults["critic.update"]> {
    const c = this.#config.critic as NonNullable<ResolvedConfig["critic"]>;
    const chosen = mini.filter((s) => s.response.length > 0);
    const plan = planMicroBatches(
      chosen.map((s) => s.prompt.length + s.response.length),
      { tokensPerMicroBatch: this.#microBatchTokens, dataParallelRanks: 1 },
    );
    const microBatches = (plan.ranks[0] as (typeof plan.ranks)[number]).microBatches
      .filter((mb) => mb.length > 0)
      .map((mb) => {
        const part = mb.map((i) => chosen[i] as Sample);
        const aligned = (pick: (s: Sample) => ArrayLike<number> | undefined) =>
          concat(
            part.map((s) => responseAligned(s, pick(s))),
            Float32Array,
          ) as Float32Array;
        return {
          ...this.#packed(part),
          values: aligned((s) => s.values),
          returns: aligned((s) => s.returns),
          mask: aligned((s) => new Float32Array(s.response.length).fill(1)),
        };
      });
    return this.#call("critic.update", {
      name: this.#critic,
      microBatches,
      counts: { tokens, sequences: mini.length },
      config: {
        cliprangeValue: c.cliprangeValue,
        aggMode: c.aggMode,
        lossScaleFactor: this.#config.algorithm.loss.lossScaleFactor ?? 1,
      },
    });
  }

  /**
   * The actor update: the batch cut in order into miniBatchesPerStep mini-batches, each planned
   * into micro-batches of at most tokensPerMicroBatch tokens and sent as one optimizer update
   * (normalised by the mini-batch's token and sequence counts), epochsPerStep passes.
   */
  async update(): Promise<StepBatch> {
    const batch = this.#current("update");
    // An offloaded optimizer state comes back for the update and goes again after it.
    const offload = this.#config.offload.optimizer;
    if (offload) await this.#moveState(batch, "model.onload");
    await this.#timed(batch, "update", async () => {
      const { miniBatchesPerStep, epochsPerStep } = this.#config;
      const size = batch.samples.length / miniBatchesPerStep;
      if (!Number.isInteger(size) || size < 1) {
        throw new Error(
          `update: ${batch.samples.length} responses do not split into miniBatchesPerStep = ${miniBatchesPerStep} equal mini-batches`,
        );
      }
      // Old logprobs left to this update: still on-policy (set() may have changed the epochs or
      // mini-batches since), or measured now, at the same weights, before anything changes them.
      let fromUpdate = batch.oldLogprobsFromUpdate === true;
      if (fromUpdate && !this.#oldLogprobsFromUpdate) {
        await this.#measureOldLogprobs(batch);
        fromUpdate = false;
      }
      // Router statistics of this update's forwards only (MoE models: a dense one has none to ask for).
      if (this.#routed) await this.#actor.routerStats();
      const sums: Record<string, number> = {};
      const add = (k: string, v: number) => {
        sums[k] = (sums[k] ?? 0) + v;
      };
      let updates = 0;
      let microBatchCount = 0;
      let backwardS = 0;
      const criticSums: Record<string, number> = {};
      const addCritic = (k: string, v: number) => {
        criticSums[k] = (criticSums[k] ?? 0) + v;
      };
      let criticUpdates = 0;
      let criticS = 0;
      for (let epoch = 0; epoch < epochsPerStep; epoch++) {
        for (let m = 0; m < miniBatchesPerStep; m++) {
          const mini = batch.samples.slice(m * size, (m + 1) * size);
          // Rejected tokens (rollout correction) do not count.
          const tokens = mini.reduce(
            (n, s) => n + (s.lossMask ? s.lossMask.reduce((a, b) => a + b, 0) : s.response.length),
            0,
          );
          // Every response counts in the sequence-mean modes, an empty one too (verl's global_batch_size).
          const sequences = mini.length;
          if (tokens === 0) continue;
          if (this.#config.critic) {
            const t0 = performance.now();
            const responseTokens = mini.reduce((n, s) => n + s.response.length, 0);
            const c = await this.#criticUpdate(mini, responseTokens);
            criticS += (performance.now() - t0) / 1000;
            criticUpdates++;
            addCritic("critic/vf_loss", c.vfLoss);
            addCritic("critic/vf_clipfrac", c.vfClipfrac);
            addCritic("critic/vpred_mean", c.vpredMean);
            addCritic("critic/grad_norm", c.gradNorm);
            batch.metrics["critic/lr"] = c.lr;
            // verl's trainer.critic_warmup: the actor waits while the step is below it.
            if (this.#config.critic.warmupSteps > batch.step) continue;
          }
          const plan = this.#microBatches(mini);
          const microBatches = plan.map((list) =>
            list.map((mb) => {
              const chosen = mb.map((i) => mini[i] as Sample);
              const { tokens: ids, cuSeqlens } = this.#packed(chosen);
              const aligned = (pick: (s: Sample) => ArrayLike<number> | undefined) =>
                concat(
                  chosen.map((s) => responseAligned(s, pick(s))),
                  Float32Array,
                ) as Float32Array;
              return {
                tokens: ids,
                cuSeqlens,
                ...(fromUpdate ? {} : { oldLogprobs: aligned((s) => s.oldLogprobs) }),
                advantages: aligned((s) => s.advantages),
                mask: aligned((s) => s.lossMask ?? new Float32Array(s.response.length).fill(1)),
                ...(this.#config.algorithm.loss.kl ? { refLogprobs: aligned((s) => s.refLogprobs) } : {}),
                ...(this.#config.algorithm.rolloutCorrection?.rolloutIs
                  ? { rolloutIsWeights: aligned((s) => s.rolloutIsWeights) }
                  : {}),
                ...this.#routedExperts(this.#actor, chosen),
                ...this.#imagesOf(chosen.map((s) => s.pixels)),
              };
            }),
          );
          const r = await this.#actor.policyUpdate(microBatches, {
            counts: { tokens, sequences },
            config: this.#config.algorithm.loss as Record<string, unknown>,
            temperature: this.#config.rollout.temperature,
          });
          if (fromUpdate) this.#oldLogprobsFromForward(batch, mini, plan, r.forwardPerReplica);
          updates++;
          microBatchCount += r.microBatches;
          backwardS += r.backwardS + r.optimizerS;
          const m2: PolicyLossMetrics = r.metrics;
          add("actor/pg_loss", m2.pgLoss);
          // A loss mode reports only the metrics it measures (gpg: none of these three).
          if (m2.pgClipfrac !== undefined) add("actor/pg_clipfrac", m2.pgClipfrac);
          if (m2.pgClipfracLower !== undefined) add("actor/pg_clipfrac_lower", m2.pgClipfracLower);
          if (m2.ppoKl !== undefined) add("actor/ppo_kl", m2.ppoKl);
          add("actor/entropy", m2.entropy);
          if (this.#config.algorithm.loss.kl) add("actor/kl_loss", m2.klLoss);
          add("actor/grad_norm", r.gradNorm);
          add("actor/skipped_updates", r.skipped ? 1 : 0);
          batch.metrics["actor/lr"] = r.lr;
        }
      }
      // No actor update ran (no token counted, a critic warming up): the weights are as they were.
      if (fromUpdate && batch.samples.some((s) => s.oldLogprobs === undefined)) {
        await this.#measureOldLogprobs(batch);
      }
      for (const [k, v] of Object.entries(sums)) {
        batch.metrics[k] = k === "actor/skipped_updates" ? v : updates ? v / updates : Number.NaN;
      }
      for (const [k, v] of Object.entries(criticSums)) batch.metrics[k] = v / criticUpdates;
      if (criticUpdates > 0) batch.timings["timing_s/update_critic"] = criticS;
      batch.metrics["actor/updates"] = updates;
      batch.metrics["actor/micro_batches"] = microBatchCount;
      const router = this.#routed ? await this.#actor.routerStats() : { tokens: 0, layers: [] };
      if (router.layers.length > 0) {
        const imbalance = router.layers.map((l) => l.loadImbalance);
        router.layers.forEach((l, i) => {
          batch.metrics[`router/layer_${i}/load_imbalance`] = l.loadImbalance;
          batch.metrics[`router/layer_${i}/entropy`] = l.entropy;
        });
        batch.metrics["router/load_imbalance/max"] = Math.max(...imbalance);
        batch.metrics["router/load_imbalance/mean"] = imbalance.reduce((a, b) => a + b, 0) / imbalance.length;
        batch.metrics["router/entropy/mean"] =
          router.layers.reduce((a, l) => a + l.entropy, 0) / router.layers.length;
      }
      batch.metrics["timing_s/update_actor_engine"] = backwardS;
      Object.assign(batch.metrics, memoryMetrics(await this.#actor.memory()));
      if (this.#rollout) {
        // The rollout's own copy of the weights (also what cluster.status() shows for it).
        const copy = await this.#rollout.memory();
        batch.metrics["perf/memory/rollout_parameters_bytes"] = Math.max(
          ...copy.map((r) => r.now.parameters),
        );
      }
    });
    if (offload) await this.#moveState(batch, "model.offload");
    return batch;
  }

  /**
   * The actor's optimizer state (or its parameters) to the host or back on every rank:
   * timing_s/offload or /onload (both kinds add up), and the bytes as perf/offload_bytes /
   * perf/onload_bytes (the optimizer's) or perf/offload_params_bytes / perf/onload_params_bytes.
   */
  async #moveState(
    batch: StepBatch,
    command: "model.offload" | "model.onload",
    what: "optimizer" | "parameters" = "optimizer",
  ): Promise<void> {
    const t0 = performance.now();
    const moved = await this.#actor.everywhere(command, { what });
    const direction = command === "model.offload" ? "offload" : "onload";
    batch.timings[`timing_s/${direction}`] =
      (batch.timings[`timing_s/${direction}`] ?? 0) + (performance.now() - t0) / 1000;
    batch.metrics[`perf/${direction}${what === "parameters" ? "_params" : ""}_bytes`] = moved.bytes;
  }

  /**
   * Makes the rollout engine use the updated weights. With the training layout, the rollout reads
   * the trainer's parameters in place: nothing moves and no reshard metric is written (a metric is
   * measured or absent). With its own layout (rollout.parallel), the weights are resharded into the
   * rollout's copy: timing_s/reshard, perf/reshard_bytes (received over all ranks), perf/reshard_gbps.
   */
  async sync(): Promise<StepBatch> {
    const batch = this.#current("sync");
    await this.#timed(batch, "sync", async () => {
      if (!this.#rollout) return;
      const { "timing_s/reshard": seconds, ...moved } = await this.#reshardRollout();
      if (seconds !== undefined) batch.timings["timing_s/reshard"] = seconds;
      Object.assign(batch.metrics, moved);
    });
    const every = this.#config.validation?.everySteps ?? 0;
    if (
      this.#valDataset &&
      every > 0 &&
      !this.#replaying &&
      (batch.step % every === 0 || batch.step === this.#config.totalSteps)
    ) {
      const t0 = performance.now();
      Object.assign(batch.metrics, (await this.#validateAt(batch.step)).metrics);
      batch.timings["timing_s/testing"] = (performance.now() - t0) / 1000;
    }
    await this.#finishStep(batch);
    return batch;
  }

  /**
   * Validation on data.val with the current weights: every held-out prompt, samplesPerPrompt
   * responses each (greedy at temperature 0), scored, reduced to verl's val-core/ and val-aux/
   * metrics. The generations are kept (lastValidation). Callable alone from a notebook; alone it
   * returns the metrics without adding a row (a step's validation goes into that step's row).
   */
  async validate(): Promise<{ step: number; metrics: Record<string, number> }> {
    if (this.batch && this.batch.step === this.step + 1 && !this.batch.stagesDone.includes("sync")) {
      throw new Error(
        `validate: step ${this.batch.step} is half done (${this.batch.stagesDone.join(", ")}); finish or discard() it first`,
      );
    }
    return this.#validateAt(this.step);
  }

  async #validateAt(step: number): Promise<{ step: number; metrics: Record<string, number> }> {
    const dataset = this.#valDataset;
    if (!dataset) throw new Error("validate: no held-out prompts; set data.val in the config");
    const v = this.#config.validation;
    const n = v.samplesPerPrompt;
    const samples: Sample[] = [];
    // A chunk of prompts per generate call, as many as a training step's.
    const chunk = Math.max(1, this.#config.promptsPerStep);
    for (let start = 0; start < dataset.items.length; start += chunk) {
      const items = dataset.items.slice(start, start + chunk);
      const prompts = items.flatMap((item) =>
        Array.from({ length: n }, () => Int32Array.from(item.promptTokenIds)),
      );
      const pixels = await promptImages(items, this.#images);
      const generations = await this.#generator.generate(
        prompts,
        {
          maxNewTokens: this.#config.rollout.maxResponseTokens,
          temperature: v.temperature,
          topP: v.topP,
          topK: v.topK,
          stopTokenIds: this.tokenizer.stopTokenIds,
          // Its own stream: the same weights and step give the same validation, resumed or not.
          seed: mixSeed(mixSeed(this.#config.seed, step), 0x76616c),
        },
        pixels.flatMap((x) => Array.from({ length: n }, () => x)),
      );
      generations.forEach((g, i) => {
        const item = items[Math.floor(i / n)] as PromptItem;
        samples.push({
          uid: `val.${start + Math.floor(i / n)}`,
          round: 0,
          prompt: prompts[i] as Int32Array,
          response: g.tokens,
          rolloutLogprobs: g.logprobs,
          finishReason: g.finishReason,
          dataSource: item.row.dataSource,
          groundTruth: item.row.rewardModel.groundTruth,
          extra: item.row.extraInfo,
        });
      });
    }
    await this.#scoreSamples(samples);
    const infos: Record<string, (number | string | boolean | null)[]> = {
      reward: samples.map((s) => s.score ?? 0),
    };
    samples.forEach((s, i) => {
      const extras = s.rewardExtras ?? {};
      // verl's reward_extra_info holds the score too when the reward function returns a dict.
      const fields: Record<string, unknown> =
        Object.keys(extras).length > 0 ? { score: s.score, ...extras } : {};
      for (const [key, value] of Object.entries(fields)) {
        if (typeof value !== "number" && typeof value !== "boolean" && typeof value !== "string") continue;
        let list = infos[key];
        if (!list) {
          list = new Array(samples.length).fill(null);
          infos[key] = list;
        }
        list[i] = value;
      }
    });
    const metrics = validationMetrics({
      dataSources: samples.map((s) => s.dataSource),
      uids: samples.map((s) => s.uid),
      infos,
    });
    this.lastValidation = { step, samples, metrics };
    return { step, metrics };
  }

  async #finishStep(batch: StepBatch): Promise<void> {
    const peak = this.#config.peakFlopsPerDevice ?? defaultPeakFlops(this.#deviceName);
    const m = stepMetrics(batch, {
      maxPromptTokens: this.#config.data.maxPromptTokens,
      gpus: this.#config.parallel.gpus,
      epochsPerStep: this.#config.epochsPerStep,
      ...(peak ? { peakFlopsPerDevice: peak } : {}),
      ...(this.#flopShape ? { flopShape: this.#flopShape } : {}),
    });
    this.step = batch.step;
    this.metrics.append(m);
    // Written off the step's path (6 ms at 80 rows of 120 metrics, growing with the run): the
    // next step's engine work overlaps it; every client reply waits for it (exclusive()).
    void this.#persistMetrics();
    this.#history.set(batch.step, batch);
    this.#stepRecords.set(batch.step, {
      responses: batch.samples.map((sample) => tokensDigest(sample.response)),
      patches: this.#pendingPatches,
    });
    this.#pendingPatches = [];
    for (const k of [...this.#history.keys()]) {
      if (k <= batch.step - this.keepRollouts) this.#history.delete(k);
    }
    this.hooks.metrics?.(m);
  }

  /** The stage table: each stage by its protocol name (step(), the handlers and the client use it). */
  readonly #stages: Record<StageName, () => Promise<StepBatch>> = {
    rollout: () => this.rollout(),
    score: () => this.score(),
    filter: () => this.filter(),
    old_logprobs: () => this.oldLogprobs(),
    ref: () => this.ref(),
    advantages: () => this.advantages(),
    update: () => this.update(),
    sync: () => this.sync(),
  };

  /** Runs one stage of the step in progress (rollout starts one) by its name. */
  stage(name: StageName): Promise<StepBatch> {
    return this.#stages[name]();
  }

  /**
   * One whole step: every stage in order. Returns its metrics row. `patches` (replay) are applied
   * after the stage they followed the first time, as the hooks that made them did.
   */
  async runStep(patches: readonly RecordedPatch[] = []): Promise<Record<string, number>> {
    return (await this.#runStep(patches, false)) as Record<string, number>;
  }

  /**
   * One whole step, as runStep(), or where it stopped when an Interrupt came (requestStop(true)):
   * the step is then left in progress before that stage.
   */
  interruptibleStep(): Promise<Record<string, number> | StepStopped> {
    return this.#runStep([], true);
  }

  async #runStep(
    patches: readonly RecordedPatch[],
    interruptible: boolean,
  ): Promise<Record<string, number> | StepStopped> {
    const started = performance.now();
    for (const [i, name] of stageNames.entries()) {
      if (interruptible && i > 0 && this.#stopAtStage) {
        this.#stopAtStage = false;
        return { step: this.step + 1, pausedAt: `before:${name}` };
      }
      this.#progress(name, started);
      await this.stage(name);
      for (const p of patches) {
        if (p.after !== name) continue;
        this.patchBatch({ ...(p.scores ? { scores: p.scores } : {}), ...(p.keep ? { keep: p.keep } : {}) });
      }
    }
    const row = this.metrics.last() as Record<string, number>;
    this.#progress("done", started, {
      reward: row["critic/score/mean"] as number,
      tokens: row["perf/total_num_tokens"] as number,
    });
    if (
      !this.#replaying &&
      this.#config.checkpoint.everySteps > 0 &&
      this.step % this.#config.checkpoint.everySteps === 0
    ) {
      this.#progress("checkpoint", started);
      await this.save();
    }
    return row;
  }

  /**
   * `steps` steps (default: up to totalSteps), stopping early when stop() is asked: after the step
   * in progress, or at its next stage boundary for an Interrupt (that step is then not in the rows).
   */
  async run(steps?: number): Promise<Record<string, number>[]> {
    const n = steps ?? Math.max(this.#config.totalSteps - this.step, 0);
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`steps: ${n} must be a non-negative integer`);
    const rows: Record<string, number>[] = [];
    for (let i = 0; i < n && !this.#stopRequested; i++) {
      const row = await this.interruptibleStep();
      if (isStopped(row)) break;
      rows.push(row);
    }
    return rows;
  }

  /** The last validation's generations, as rollouts() lays them out (for the inspector). */
  validationRollouts(): Table {
    const v = this.lastValidation;
    if (!v)
      throw new Error("validationRollouts: no validation has run yet (set data.val, or call validate())");
    return rolloutsTable(v);
  }

  /** The rollouts of a kept step (default the last completed) or of the step in progress, as an Arrow table. */
  rollouts(step?: number): Table {
    const s = step ?? this.step;
    const batch = this.#history.get(s) ?? (this.batch?.step === s ? this.batch : undefined);
    if (!batch) {
      throw new UserError(
        "NOT_KEPT",
        `rollouts: step ${s} is not kept; kept: ${[...this.#history.keys()].join(", ") || "none"}`,
      );
    }
    return rolloutsTable(batch);
  }

  /**
   * A checkpoint of the whole state after the last completed step, written atomically: into a
   * hidden folder, a manifest last, then renamed into place; older ones beyond `keep` removed.
   */
  async save(): Promise<string> {
    if (this.batch && this.batch.step === this.step + 1 && !this.batch.stagesDone.includes("sync")) {
      throw new UserError(
        "BAD_STATE",
        `save: step ${this.batch.step} is half done (${this.batch.stagesDone.join(", ")}); finish or discard() it first`,
      );
    }
    const root = join(this.runDir, "checkpoints");
    mkdirSync(root, { recursive: true });
    const name = `step-${String(this.step).padStart(6, "0")}`;
    const final = join(root, name);
    const partial = join(root, `.${name}.partial-${process.pid}`);
    rmSync(partial, { recursive: true, force: true });
    mkdirSync(partial, { recursive: true });
    try {
      await this.#writeState(partial);
      rmSync(final, { recursive: true, force: true });
      renameSync(partial, final);
    } catch (error) {
      rmSync(partial, { recursive: true, force: true });
      throw error;
    }
    const kept = listCheckpoints(root);
    for (const old of kept.slice(0, Math.max(kept.length - this.#config.checkpoint.keep, 0))) {
      rmSync(join(root, old), { recursive: true, force: true });
    }
    return final;
  }

  /** Everything a restore needs, into `dir`; the manifest is written last. */
  async #writeState(dir: string): Promise<void> {
    await this.#actor.everywhere("model.save", { dir: join(dir, "model") });
    await this.#actor.everywhere("model.saveOptimizer", { file: join(dir, "optimizer.safetensors") });
    if (this.#config.critic) {
      await this.#call("critic.save", {
        name: this.#critic,
        dir: join(dir, "critic"),
        optimizerFile: join(dir, "critic-optimizer.safetensors"),
      });
    }
    const state: ExperimentState = {
      version: 1,
      step: this.step,
      dataset: this.dataset.state(),
      klCoefficient: this.#kl ? this.#kl.coefficient : null,
      config: this.#config,
    };
    writeFileSync(join(dir, "state.json"), `${JSON.stringify(state, null, 2)}\n`);
    await this.metrics.writeFile(join(dir, "metrics.arrow"));
    await writeManifest(dir);
  }

  #requireStepBoundary(what: string): void {
    if (this.batch && this.batch.step === this.step + 1 && !this.batch.stagesDone.includes("sync")) {
      throw new UserError(
        "BAD_STATE",
        `${what}: step ${this.batch.step} is half done (${this.batch.stagesDone.join(", ")}); finish it (step) or discard() it first`,
      );
    }
  }

  /**
   * Keeps the whole state after the last completed step (as a checkpoint, under snapshots/) so
   * that restore() can rewind to it. Returns its id.
   */
  async snapshot(): Promise<{ id: string; step: number }> {
    this.#requireStepBoundary("snapshot");
    const root = join(this.runDir, "snapshots");
    mkdirSync(root, { recursive: true });
    const id = `snap-${String(++this.#snapshots).padStart(3, "0")}-step-${String(this.step).padStart(6, "0")}`;
    const partial = join(root, `.${id}.partial-${process.pid}`);
    mkdirSync(partial, { recursive: true });
    try {
      await this.#writeState(partial);
      renameSync(partial, join(root, id));
    } catch (error) {
      rmSync(partial, { recursive: true, force: true });
      throw error;
    }
    return { id, step: this.step };
  }

  /** Rewinds to a snapshot (an id from snapshot()) or a checkpoint folder; the step in progress is dropped. */
  async restore(idOrDir: string): Promise<{ step: number }> {
    const dir = /^snap-\d+-step-\d+$/.test(idOrDir)
      ? join(this.runDir, "snapshots", idOrDir)
      : resolve(idOrDir);
    await verifyCheckpoint(dir);
    const state = JSON.parse(readFileSync(join(dir, "state.json"), "utf8")) as ExperimentState;
    await this.#restoreState(dir, state, { reloadActor: true });
    return { step: this.step };
  }

  /** Snapshots and checkpoints of this run, by the step they hold. */
  savedStates(): { step: number; dir: string }[] {
    const found: { step: number; dir: string }[] = [];
    for (const sub of ["snapshots", "checkpoints"]) {
      const root = join(this.runDir, sub);
      let names: string[] = [];
      try {
        names = readdirSync(root).filter((n) => !n.startsWith("."));
      } catch {
        continue;
      }
      for (const n of names) {
        const m = /step-(\d+)$/.exec(n);
        if (m) found.push({ step: Number(m[1]), dir: join(root, n) });
      }
    }
    return found;
  }

  /**
   * Runs step `step` again with the same seeds from the nearest saved state before it (a snapshot
   * or checkpoint of step − 1 or earlier; the steps in between are run again first), then comes
   * back to where the run was. What hooks changed in those steps (patchBatch) and the settings
   * changed between them (set) are applied again at the same points. Returns both metrics rows
   * and how many responses came out token for token the same.
   */
  async replay(step: number): Promise<ReplayResult> {
    this.#requireStepBoundary("replay");
    if (!Number.isInteger(step) || step < 1 || step > this.step) {
      throw new UserError(
        "BAD_ARGS",
        `replay: step ${step} must be a completed step, 1..${this.step}`,
        "step",
      );
    }
    const saved = this.savedStates().filter((s) => s.step <= step - 1);
    const before = saved.sort((a, b) => b.step - a.step)[0];
    if (!before) {
      const have = [...new Set(this.savedStates().map((s) => s.step))].sort((a, b) => a - b);
      throw new UserError(
        "NOT_KEPT",
        `replay: step ${step} needs a snapshot or checkpoint of step ${step - 1} or an earlier one; saved steps: ${have.join(", ") || "none"} (call snapshot() before a step to replay it later, or set checkpoint.everySteps)`,
      );
    }
    const original = this.metrics.rows.find((r) => r.step === step);
    const originalRecord = this.#stepRecords.get(step);
    const records = new Map(this.#stepRecords);
    const changes = [...this.#changes];
    const history = new Map(this.#history);
    const here = await this.snapshot();
    this.#replaying = true;
    let replayed: Record<string, number> = {};
    let replayedBatch: StepBatch | undefined;
    try {
      await this.restore(before.dir);
      for (let s = before.step + 1; s <= step; s++) {
        // The settings changed at this boundary (and at the saved one: set() is idempotent).
        for (const c of changes) if (c.step === s - 1 && c.step >= before.step) await this.set(c.patch);
        replayed = await this.runStep(records.get(s)?.patches ?? []);
      }
      replayedBatch = this.#history.get(step);
    } finally {
      await this.restore(here.id);
      this.#replaying = false;
      rmSync(join(this.runDir, "snapshots", here.id), { recursive: true, force: true });
      this.#stepRecords = records;
      this.#changes = changes;
      this.#history.clear();
      for (const [k, v] of history) this.#history.set(k, v);
    }
    if (!replayedBatch) throw new Error(`replay: step ${step} left no batch`);
    const identical = replayedBatch.samples.filter(
      (sample, i) => originalRecord?.responses[i] === tokensDigest(sample.response),
    ).length;
    return {
      step,
      fromStep: before.step,
      original: original ? { ...original } : {},
      replayed,
      responses: replayedBatch.samples.length,
      originalResponses: originalRecord?.responses.length ?? 0,
      identicalResponses: identical,
      patchesApplied: records.get(step)?.patches.length ?? 0,
      rollouts: rolloutsTable(replayedBatch),
    };
  }

  /**
   * Changes settings between steps, checked as a whole config (errors name the field). Shorthands:
   * lr, maxGradNorm, temperature, entropyCoeff. The model, data, seed, layouts (training and
   * rollout) and whether a reference model is used cannot change in a running experiment.
   */
  async set(patch: Record<string, unknown>): Promise<ResolvedConfig> {
    const shorthand: Record<string, string[]> = {
      lr: ["optimizer", "lr"],
      maxGradNorm: ["optimizer", "maxGradNorm"],
      temperature: ["rollout", "temperature"],
      entropyCoeff: ["algorithm", "loss", "entropyCoeff"],
    };
    const expanded: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(patch)) {
      const path = shorthand[key];
      if (path) deepSet(expanded, path, value);
      else expanded[key] = value;
    }
    for (const fixed of ["name", "runDir", "seed", "model", "data", "parallel"]) {
      if (fixed in expanded)
        throw new ConfigError(fixed, "cannot change in a running experiment; start a new one");
    }
    const next = resolveConfig(deepMerge(this.#config, expanded) as never);
    if (JSON.stringify(next.rollout.parallel) !== JSON.stringify(this.#config.rollout.parallel)) {
      throw new ConfigError(
        "rollout.parallel",
        "the rollout's layout cannot change in a running experiment; start a new one",
      );
    }
    if (needsReference(next) !== needsReference(this.#config)) {
      throw new ConfigError(
        "algorithm",
        "turning KL (and so the reference model) on or off needs a new experiment",
      );
    }
    const o = next.optimizer;
    if (o.lr !== this.#config.optimizer.lr || o.maxGradNorm !== this.#config.optimizer.maxGradNorm) {
      await this.#actor.everywhere("model.setTraining", { lr: o.lr, maxGradNorm: o.maxGradNorm });
    }
    if (
      next.algorithm.klReward &&
      this.#kl &&
      next.algorithm.klReward.coefficient !== this.#config.algorithm.klReward?.coefficient
    ) {
      const k = next.algorithm.klReward;
      this.#kl = k.adaptive
        ? new AdaptiveKlController({ initialCoefficient: k.coefficient, ...k.adaptive })
        : new FixedKlController(k.coefficient);
    }
    // Both sides resolved alike (resolveConfig fills defaults the stored config may leave out).
    const changed = changedLeaves(resolveConfig(this.#config as never), resolveConfig(next as never));
    this.#config = { ...next, runDir: this.#config.runDir };
    writeFileSync(join(this.runDir, "config.json"), `${JSON.stringify(this.#config, null, 2)}\n`);
    if (!this.#replaying && Object.keys(changed).length > 0) {
      this.#changes.push({ step: this.step, patch: expanded });
      this.#logChange({ event: "set", step: this.step, patch: expanded, changed });
    }
    return this.#config;
  }

  /** The step in progress as a rollouts table (what hooks look at). */
  batchTable(): Table {
    if (!this.batch) throw new Error("batch: no step has started; call rollout() first");
    return rolloutsTable(this.batch);
  }

  /**
   * Changes the step in progress (from a hook): new scores (before advantages are computed), or
   * keep only some responses (before old logprobs). Indices are rows of batchTable().
   */
  patchBatch(patch: { scores?: ArrayLike<number>; keep?: ArrayLike<number> }): StepBatch {
    const b = this.batch;
    if (!b || b.stagesDone.includes("sync")) throw new Error("patch: no step in progress");
    if (patch.scores !== undefined) {
      if (b.stagesDone.includes("advantages"))
        throw new Error("patch.scores: the advantages are computed already; patch scores before them");
      if (patch.scores.length !== b.samples.length) {
        throw new RangeError(`patch.scores: ${patch.scores.length} values for ${b.samples.length} responses`);
      }
      b.samples.forEach((s, i) => {
        const v = patch.scores?.[i] as number;
        if (!Number.isFinite(v)) throw new RangeError(`patch.scores[${i}]: ${v} is not a finite number`);
        s.score = v;
        s.shapedScore = v;
      });
    }
    if (patch.keep !== undefined) {
      if (b.stagesDone.includes("old_logprobs"))
        throw new Error("patch.keep: drop responses before old_logprobs");
      const keep = Array.from(patch.keep);
      for (const i of keep) {
        if (!Number.isInteger(i) || i < 0 || i >= b.samples.length)
          throw new RangeError(`patch.keep: ${i} is not a row of the batch (0..${b.samples.length - 1})`);
      }
      b.samples = keep.map((i) => b.samples[i] as Sample);
    }
    const after = b.stagesDone.at(-1);
    if (after) {
      this.#pendingPatches.push({
        after,
        ...(patch.scores !== undefined ? { scores: Float64Array.from(patch.scores) } : {}),
        ...(patch.keep !== undefined ? { keep: Int32Array.from(patch.keep) } : {}),
      });
    }
    return b;
  }

  /**
   * The actor's residual stream at `layer` for some responses (rows of a step's rollouts table;
   * default every row of the last step), one table row per token: row, uid, position, token,
   * response (0 for prompt tokens), values (List<Float32>, the hidden vector). To diff against
   * another model, compute the same table there (Model.activations) and compare by row/position.
   */
  async activations(layer: string | number, step?: number, rows?: number[]): Promise<Table> {
    const table = this.rollouts(step);
    const promptCol = table.getChild("prompt_tokens");
    const responseCol = table.getChild("response_tokens");
    const uidCol = table.getChild("uid");
    const chosen = rows ?? Array.from({ length: table.numRows }, (_, i) => i);
    for (const r of chosen) {
      if (!Number.isInteger(r) || r < 0 || r >= table.numRows)
        throw new RangeError(
          `rows: ${r} is not a row of step ${step ?? this.step} (0..${table.numRows - 1})`,
        );
    }
    const sequences = chosen.map((r) => {
      const p = promptCol?.get(r)?.toArray() as Int32Array;
      const q = responseCol?.get(r)?.toArray() as Int32Array;
      const ids = new Int32Array(p.length + q.length);
      ids.set(p);
      ids.set(q, p.length);
      return { row: r, uid: String(uidCol?.get(r)), ids, promptLength: p.length };
    });
    const cu = new Int32Array(sequences.length + 1);
    sequences.forEach((s, i) => {
      cu[i + 1] = (cu[i] as number) + s.ids.length;
    });
    const tokens = concat(
      sequences.map((s) => s.ids),
      Int32Array,
    ) as Int32Array;
    const out = await this.#actor.activations({ tokens, cuSeqlens: cu, layer });
    const hidden = out.shape[1];
    const rowsOut: number[] = [];
    const uids: string[] = [];
    const positions: number[] = [];
    const ids: number[] = [];
    const isResponse: number[] = [];
    const values: Float32Array[] = [];
    let at = 0;
    for (const s of sequences) {
      for (let t = 0; t < s.ids.length; t++, at++) {
        rowsOut.push(s.row);
        uids.push(s.uid);
        positions.push(t);
        ids.push(s.ids[t] as number);
        isResponse.push(t >= s.promptLength ? 1 : 0);
        values.push(out.values.subarray(at * hidden, (at + 1) * hidden));
      }
    }
    return activationsTable({
      row: rowsOut,
      uid: uids,
      position: positions,
      token: ids,
      response: isResponse,
      values,
    });
  }

  /** Writes the actor as an HF folder (config.json, safetensors, tokenizer files copied). */
  async export(dir: string): Promise<string> {
    const target = resolve(dir);
    await this.#actor.everywhere("model.save", { dir: target });
    for (const f of [
      "tokenizer.json",
      "tokenizer_config.json",
      "chat_template.jinja",
      "generation_config.json",
      "special_tokens_map.json",
      "vocab.json",
      "merges.txt",
    ]) {
      try {
        writeFileSync(join(target, f), readFileSync(join(this.#config.model.path, f)));
      } catch (error) {
        // A tokenizer file the model does not have is fine; any other failure is the export's.
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      }
    }
    return target;
  }
}

export interface ReplayResult {
  step: number;
  original: Record<string, number>;
  replayed: Record<string, number>;
  /** The saved state it started from (step − 1, or earlier: the steps between were run again). */
  fromStep: number;
  /** Responses of the replayed step, and of the original. */
  responses: number;
  originalResponses: number;
  /** Responses whose tokens came out the same as the first time, row by row. */
  identicalResponses: number;
  /** Hook changes (scores, kept rows) of the original step applied again. */
  patchesApplied: number;
  rollouts: Table;
}

function deepSet(into: Record<string, unknown>, path: string[], value: unknown): void {
  let at = into;
  for (const key of path.slice(0, -1)) {
    at[key] = (at[key] as Record<string, unknown> | undefined) ?? {};
    at = at[key] as Record<string, unknown>;
  }
  at[path[path.length - 1] as string] = value;
}

function deepMerge(base: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  if (base === null || typeof base !== "object" || Array.isArray(base)) return patch;
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [k, v] of Object.entries(patch)) out[k] = deepMerge(out[k], v);
  return out;
}

/** An outcome reward as token rewards: the (shaped) score on the last response token. */
function outcomeTokenRewards(s: Sample): Float64Array {
  const rewards = new Float64Array(s.response.length);
  if (rewards.length > 0) rewards[rewards.length - 1] = s.shapedScore ?? 0;
  return rewards;
}
