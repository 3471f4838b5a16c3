// An experiment as a notebook holds it: typed calls to the controller's experiment (each stage
// alone, step(), run(n) with live progress), Arrow tables back for metrics and rollouts. The
// experiment itself lives in the controller: a kernel restart loses only this handle; reattach
// with cluster.experiments().
import { isAbsolute, resolve } from "node:path";
import type { Table } from "apache-arrow";
import { inNotebook, LiveOutput, showBundle } from "../notebook/display.js";
import { type ChartKeys, chartHtml, chartSpec, plotlyScript } from "../notebook/plot.js";
import { Progress } from "../notebook/progress.js";
import {
  type ExperimentOp,
  type ExperimentProgress,
  type ExperimentStage,
  type ExperimentStatus,
  experimentStages,
} from "../protocol/messages.js";
import { type ExperimentConfig, resolveConfig } from "../rl/config.js";
import { MetricsLog } from "../rl/metrics.js";
import type { Cluster } from "./client.js";

/** A stage's answer: where the step stands (per-token data stays in the controller; see rollouts()). */
export interface StageResult {
  step: number;
  stagesDone: string[];
  samples: number;
  rounds: number;
  timings: Record<string, number>;
  metrics: Record<string, number>;
  /** sync, the last stage, answers with the step's metrics row too. */
  row?: MetricsRow;
}

export type MetricsRow = { step: number } & Record<string, number>;

/** The stages in order, with the names hooks use (`before:update`, `after:rollout` …). */
export const stages = experimentStages;
export type Stage = ExperimentStage;
export type HookPoint = `before:${Stage}` | `after:${Stage}`;

/** What a hook gets: the step in progress, to look at or change. */
export interface HookContext {
  point: HookPoint;
  step: number;
  experiment: Experiment;
  /** The step's responses so far, as a rollouts table (prompt, response, tokens, scores …). */
  rollouts(): Promise<Table>;
  /** Replaces every response's score (before advantages). */
  setScores(scores: ArrayLike<number>): Promise<void>;
  /** Keeps only these rows of rollouts() (before old logprobs). */
  keep(rows: ArrayLike<number>): Promise<void>;
}

export type Hook = (context: HookContext) => unknown;

/** A step stopped at a pause point; continueStep() goes on from there. */
export interface Paused {
  pausedAt: HookPoint;
  step: number;
}

export interface ReplayResult {
  step: number;
  original: Record<string, number>;
  replayed: Record<string, number>;
  responses: number;
  identicalResponses: number;
  rollouts: Table;
}

/** A hook threw: the step stopped there; the step in progress is kept (continueStep() or discard()). */
export class HookError extends Error {
  constructor(
    readonly point: HookPoint,
    readonly cause: unknown,
  ) {
    super(`hook ${point} failed: ${(cause as Error)?.message ?? String(cause)}`);
    this.name = "HookError";
  }
}

const stageMethod: Record<Stage, ExperimentOp> = {
  rollout: "rollout",
  score: "score",
  filter: "filter",
  old_logprobs: "old_logprobs",
  ref: "ref",
  advantages: "advantages",
  update: "update",
  sync: "sync",
};

export interface RunOptions {
  /** Called for every stage started and every step ended. */
  onProgress?: (event: ExperimentProgress) => void;
  /** Called with each step's metrics row as it is written. */
  onMetrics?: (row: MetricsRow) => void;
  /**
   * A live progress display (one output updated in place in a notebook, a bar on a terminal).
   * Default: on in a notebook, off elsewhere.
   */
  progress?: boolean;
  /** Metrics to chart live while the run goes (e.g. ["critic/score/mean", "actor/entropy"]). */
  chart?: ChartKeys;
}

const absolute = (p: string) => (isAbsolute(p) || /^[a-z]+:\/\//.test(p) ? p : resolve(p));

/**
 * Checks the config here (errors name the field before anything is sent) and makes its paths
 * absolute against this process's working folder, since the controller has its own.
 */
export function prepareConfig(config: ExperimentConfig): ExperimentConfig {
  const resolved = resolveConfig(config);
  return {
    ...config,
    runDir: absolute(resolved.runDir),
    model: { ...config.model, path: absolute(config.model.path) },
    data: {
      ...config.data,
      train: resolved.data.train.map(absolute),
      ...(config.data.val === undefined ? {} : { val: resolved.data.val.map(absolute) }),
    },
    ...(config.reward?.fn
      ? {
          reward: {
            ...config.reward,
            fn: { ...config.reward.fn, module: absolute(config.reward.fn.module) },
          },
        }
      : {}),
  };
}

export class Experiment {
  #status: ExperimentStatus;
  readonly #hooks = new Map<HookPoint, Set<Hook>>();
  readonly #pauses = new Set<HookPoint>();
  /** Where the last step paused; continueStep() starts past it. */
  #pausedAt: HookPoint | undefined;

  constructor(
    readonly cluster: Cluster,
    status: ExperimentStatus,
  ) {
    this.#status = status;
  }

  get id(): string {
    return this.#status.id;
  }
  get runDir(): string {
    return this.#status.runDir;
  }
  /** Steps completed, as of the last answer. */
  get stepsDone(): number {
    return this.#status.step;
  }
  get status(): ExperimentStatus {
    return this.#status;
  }

  async #op<T>(op: ExperimentOp, extra: Record<string, unknown> = {}): Promise<T> {
    return (await this.cluster.call("experiment.call", { id: this.id, op, ...extra })) as T;
  }

  async #stage(op: ExperimentOp): Promise<StageResult> {
    const result = await this.#op<StageResult>(op);
    await this.refresh();
    return result;
  }

  /** Where the experiment stands now (asks the controller). */
  async refresh(): Promise<ExperimentStatus> {
    this.#status = await this.#op<ExperimentStatus>("state");
    return this.#status;
  }

  rollout(): Promise<StageResult> {
    return this.#stage("rollout");
  }
  score(): Promise<StageResult> {
    return this.#stage("score");
  }
  filter(): Promise<StageResult> {
    return this.#stage("filter");
  }
  oldLogprobs(): Promise<StageResult> {
    return this.#stage("old_logprobs");
  }
  ref(): Promise<StageResult> {
    return this.#stage("ref");
  }
  advantages(): Promise<StageResult> {
    return this.#stage("advantages");
  }
  update(): Promise<StageResult> {
    return this.#stage("update");
  }
  sync(): Promise<StageResult> {
    return this.#stage("sync");
  }
  /** Drops the step in progress. */
  async discard(): Promise<void> {
    this.#status = await this.#op<ExperimentStatus>("discard");
  }

  /**
   * Runs `fn` at a stage boundary of every later step, e.g. `on("after:rollout", ctx => ...)`; it may
   * look at or change the batch. Returns the function that removes it.
   */
  on(point: HookPoint, hook: Hook): () => void {
    checkPoint(point);
    const set = this.#hooks.get(point) ?? new Set();
    this.#hooks.set(point, set);
    set.add(hook);
    return () => set.delete(hook);
  }

  /**
   * Makes step() stop at this point: it resolves with `{ step, paused: 1 }` (the step in progress,
   * no metrics yet) and `pausedAt` names the point; continueStep() goes on.
   */
  pauseAt(point: HookPoint): void {
    checkPoint(point);
    this.#pauses.add(point);
  }

  /** Where the last step() or continueStep() paused; undefined when it finished. */
  get pausedAt(): HookPoint | undefined {
    return this.#pausedAt;
  }

  /** Removes one pause point, or all. */
  clearPauses(point?: HookPoint): void {
    if (point) this.#pauses.delete(point);
    else this.#pauses.clear();
  }

  /**
   * One whole step; its metrics row. With hooks or pause points set, the notebook drives the
   * stages one by one (calling hooks between them); otherwise the controller runs the step alone.
   */
  async step(options: RunOptions = {}): Promise<MetricsRow> {
    if (this.#hooks.size === 0 && this.#pauses.size === 0) {
      return this.#listening(options, async () => this.#op<MetricsRow>("step"));
    }
    return this.#drive(0, undefined, options);
  }

  /** Goes on with a step that paused (or whose hook threw), from where it stopped. */
  async continueStep(options: RunOptions = {}): Promise<MetricsRow> {
    const status = await this.refresh();
    if (!status.inProgress) throw new Error("continueStep: no step in progress; call step()");
    const done = status.inProgress.stagesDone;
    const next = stages.findIndex((s) => !done.includes(s));
    return this.#drive(next, this.#pausedAt, options);
  }

  async #drive(from: number, skipPause: HookPoint | undefined, options: RunOptions): Promise<MetricsRow> {
    this.#pausedAt = undefined;
    const started = performance.now();
    let ended: StageResult | undefined;
    for (let i = from; i < stages.length; i++) {
      const stage = stages[i] as Stage;
      for (const point of [`before:${stage}`, `after:${stage}`] as const) {
        if (point.startsWith("after:")) {
          options.onProgress?.({
            id: this.id,
            step: this.stepsDone,
            totalSteps: this.#status.totalSteps,
            stage,
            elapsedS: (performance.now() - started) / 1000,
          });
          ended = await this.#op<StageResult>(stageMethod[stage]);
        }
        if (this.#pauses.has(point) && point !== skipPause) {
          this.#pausedAt = point;
          await this.refresh();
          return { step: this.stepsDone + 1, paused: 1 };
        }
        await this.#runHooks(point);
      }
    }
    await this.refresh();
    const row = ended?.row as MetricsRow;
    options.onMetrics?.(row);
    options.onProgress?.({
      id: this.id,
      step: this.stepsDone,
      totalSteps: this.#status.totalSteps,
      stage: "done",
      elapsedS: (performance.now() - started) / 1000,
      ...(row["critic/score/mean"] !== undefined ? { reward: row["critic/score/mean"] } : {}),
    });
    return row;
  }

  async #runHooks(point: HookPoint): Promise<void> {
    const hooks = this.#hooks.get(point);
    if (!hooks || hooks.size === 0) return;
    const context: HookContext = {
      point,
      step: this.stepsDone + 1,
      experiment: this,
      rollouts: () => this.#op<Table>("batch"),
      setScores: async (scores) => {
        await this.#op("patch", { scores: Float64Array.from(scores) });
      },
      keep: async (rows) => {
        await this.#op("patch", { keep: Int32Array.from(rows) });
      },
    };
    for (const hook of hooks) {
      try {
        await hook(context);
      } catch (error) {
        await this.refresh().catch(() => undefined);
        throw new HookError(point, error);
      }
    }
  }

  /**
   * `steps` steps (default: up to totalSteps); stop() ends it after the step in progress. With
   * hooks or pause points, steps are driven from here (a pause ends the run early).
   */
  async run(steps?: number, options: RunOptions = {}): Promise<MetricsRow[]> {
    const n = steps ?? Math.max(this.#status.totalSteps - this.stepsDone, 0);
    if (this.#hooks.size === 0 && this.#pauses.size === 0) {
      return this.#listening(options, () => this.#op<MetricsRow[]>("run", { steps: n }), n);
    }
    const [wrapped, finish] = await this.#withDisplays(options, n);
    const rows: MetricsRow[] = [];
    try {
      for (let i = 0; i < n; i++) {
        const r = await this.#drive(0, undefined, wrapped);
        if (this.#pausedAt) break;
        rows.push(r);
      }
    } finally {
      finish();
    }
    return rows;
  }

  /**
   * Changes settings between steps (validated as a whole config; errors name the field), e.g.
   * `set({ lr: 5e-7 })`, `set({ rollout: { temperature: 0.8 } })`. Returns the settings in force.
   */
  async set(patch: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.#op("set", { patch });
  }

  /** Saves the whole state after the last completed step; restore(id) rewinds to it. */
  async snapshot(): Promise<{ id: string; step: number }> {
    return this.#op("snapshot");
  }

  /** Rewinds to a snapshot (or a checkpoint folder): weights, optimizer, data position, metrics. */
  async restore(snapshot: string | { id: string }): Promise<{ step: number }> {
    const id = typeof snapshot === "string" ? snapshot : snapshot.id;
    const r = await this.#op<{ step: number }>("restore", { snapshot: id });
    await this.refresh();
    return r;
  }

  /** Runs a completed step again from the state saved before it (same seeds); both metrics rows back. */
  async replay(step: number): Promise<ReplayResult> {
    return this.#op("replay", { step });
  }

  /**
   * Validation on data.val with the current weights, alone (between steps): verl's val-core/ and
   * val-aux/ metrics (mean@N, best@n, worst@n, maj@n per data source and reward field).
   */
  async validate(): Promise<{ step: number; metrics: Record<string, number> }> {
    return this.#op("validate");
  }

  /** Adds the live displays that `options` asks for to its callbacks; returns the options and a finisher. */
  async #withDisplays(options: RunOptions, steps: number): Promise<[RunOptions, () => void]> {
    const wantProgress = options.progress ?? inNotebook();
    if (!wantProgress && !options.chart) return [options, () => undefined];
    const bar = wantProgress ? new Progress() : undefined;
    const startStep = this.stepsDone;
    const started = performance.now();
    let reward: number | undefined;
    let tokens = 0;
    let chart: ((row: MetricsRow) => void) | undefined;
    if (options.chart) {
      const keys = options.chart;
      const log = MetricsLog.fromTable(await this.metrics());
      const live = new LiveOutput();
      showBundle({ "text/html": plotlyScript(), "text/plain": "" });
      chart = (row) => {
        log.append(row);
        live.show({
          "text/html": chartHtml(chartSpec(log, keys, { missing: "empty" }), { inline: false }),
          "text/plain": `${log.length} steps`,
        });
      };
    }
    const wrapped: RunOptions = {
      ...options,
      onProgress: (e) => {
        options.onProgress?.(e);
        if (e.stage === "done") {
          reward = e.reward ?? reward;
          tokens += e.tokens ?? 0;
        }
        bar?.update({
          stage: e.stage,
          step: Math.min(Math.max(e.step - startStep, 0), steps),
          totalSteps: Math.max(steps, 1),
          elapsedS: (performance.now() - started) / 1000,
          tokens,
          ...(reward !== undefined ? { reward } : {}),
        });
      },
      onMetrics: (row) => {
        options.onMetrics?.(row);
        chart?.(row);
      },
    };
    return [wrapped, () => bar?.done()];
  }

  async #listening<T>(given: RunOptions, fn: () => Promise<T>, steps = 1): Promise<T> {
    const [options, finish] = await this.#withDisplays(given, steps);
    try {
      return await this.#subscribed(options, fn);
    } finally {
      finish();
    }
  }

  async #subscribed<T>(options: RunOptions, fn: () => Promise<T>): Promise<T> {
    const off: (() => void)[] = [];
    if (options.onProgress) {
      const f = options.onProgress;
      off.push(this.cluster.on("experiment.progress", (e) => e.id === this.id && f(e)));
    }
    if (options.onMetrics) {
      const f = options.onMetrics;
      off.push(this.cluster.on("experiment.metrics", (e) => e.id === this.id && f(e.row as MetricsRow)));
    }
    try {
      return await fn();
    } finally {
      for (const o of off) o();
      await this.refresh().catch(() => undefined);
    }
  }

  /** Asks a run() in progress to stop after its current step. */
  async stop(): Promise<void> {
    this.#status = await this.#op<ExperimentStatus>("stop");
  }

  /** One row per completed step, verl's metric names as columns. */
  metrics(): Promise<Table> {
    return this.#op<Table>("metrics");
  }

  /** The rollouts of a completed step (default the last; the last few are kept) as an Arrow table. */
  rollouts(step?: number): Promise<Table> {
    return this.#op<Table>("rollouts", step === undefined ? {} : { step });
  }

  /**
   * The actor's residual stream at a layer ("model.layers.N", "model.norm", "model.embed_tokens")
   * for some rows of a step's rollouts (default all of the last step): one row per token.
   */
  activations(layer: string | number, options: { step?: number; rows?: number[] } = {}): Promise<Table> {
    return this.#op("activations", {
      layer,
      ...(options.step !== undefined ? { step: options.step } : {}),
      ...(options.rows ? { rows: Int32Array.from(options.rows) } : {}),
    });
  }

  /** Writes a checkpoint now; returns its folder. */
  async save(): Promise<string> {
    return (await this.#op<{ dir: string }>("save")).dir;
  }

  /** Writes the actor as an HF folder (with the tokenizer files). */
  async export(dir: string): Promise<string> {
    return (await this.#op<{ dir: string }>("export", { dir: absolute(dir) })).dir;
  }

  /** Frees the experiment's models on the workers; the run folder stays. */
  async close(): Promise<void> {
    await this.#op("close");
  }
}

function checkPoint(point: string): void {
  const [when, stage] = point.split(":");
  if ((when !== "before" && when !== "after") || !stages.includes(stage as Stage)) {
    throw new RangeError(
      `point: ${JSON.stringify(point)}; allowed: before:<stage> or after:<stage> with stage one of ${stages.join(", ")}`,
    );
  }
}

/** Builds an experiment on the cluster's controller. */
export async function createExperiment(cluster: Cluster, config: ExperimentConfig): Promise<Experiment> {
  const status = await cluster.call("experiment.create", { config: prepareConfig(config) });
  return new Experiment(cluster, status);
}

/** Continues an experiment from a checkpoint folder or a run folder (its newest checkpoint). */
export async function resumeExperiment(
  cluster: Cluster,
  path: string,
  options: { totalSteps?: number } = {},
): Promise<Experiment> {
  const status = await cluster.call("experiment.create", { resume: absolute(path), ...options });
  return new Experiment(cluster, status);
}
