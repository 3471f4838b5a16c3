// An experiment as a notebook holds it: typed calls to the controller's experiment (each stage
// alone, step(), run(n) with live progress), Arrow tables back for metrics and rollouts. The
// experiment itself lives in the controller: a kernel restart loses only this handle; reattach
// with cluster.experiments().
import { isAbsolute, resolve } from "node:path";
import { inspect } from "node:util";
import type { Table } from "apache-arrow";
import { inNotebook, LiveOutput } from "../notebook/display.js";
import { type ChartKeys, chartHtml, chartSpec, loadPlotly } from "../notebook/plot.js";
import { Progress, type ProgressState } from "../notebook/progress.js";
import { evaluationKeys } from "../notebook/views.js";
import {
  type ExperimentOp,
  type ExperimentProgress,
  type ExperimentStage,
  type ExperimentStatus,
  experimentStages,
} from "../protocol/messages.js";
import {
  type ExperimentConfig,
  type ParallelLayout,
  type ResolvedConfig,
  resolveConfig,
} from "../rl/config.js";
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

/** A step stopped at a pause point; continueStep() goes on from there. Not a metrics row: it has none yet. */
export interface Paused {
  pausedAt: HookPoint;
  step: number;
}

/** True for what step() answers when it stopped at a pause point. */
export function isPaused(result: MetricsRow | Paused): result is Paused {
  return typeof (result as Paused).pausedAt === "string";
}

export interface ReplayResult {
  step: number;
  /** The saved state it started from: step − 1, or earlier (the steps between were run again). */
  fromStep: number;
  original: Record<string, number>;
  replayed: Record<string, number>;
  /** Responses of the replayed step, and of the original one. */
  responses: number;
  originalResponses: number;
  /** Responses whose tokens came out the same as the first time, row by row. */
  identicalResponses: number;
  /** What hooks changed in the original step (scores, kept rows), applied again at the same stage. */
  patchesApplied: number;
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
   * Default: on for run() in a notebook, off for step() and outside a notebook.
   */
  progress?: boolean;
  /**
   * Metrics to chart live while the run goes (e.g. ["critic/score/mean", "actor/entropy"]);
   * validation metrics (`val-core/<data_source>/…`) join as panels of their own once they appear.
   */
  chart?: ChartKeys;
  /**
   * Keep each step's per-response values (score, reward, response_length, advantage) here, for
   * `distributions()`: one rollouts table fetched per step (off by default).
   */
  distributions?: boolean;
}

/** The per-response columns that `run(n, { distributions: true })` keeps per step. */
export const distributionColumns = ["score", "reward", "response_length", "advantage"] as const;
export type DistributionColumn = (typeof distributionColumns)[number];

const absolute = (p: string) => (isAbsolute(p) || /^[a-z]+:\/\//.test(p) ? p : resolve(p));

/**
 * Checks the config here (errors name the field before anything is sent) and makes its paths
 * absolute against this process's working folder, since the controller has its own.
 */
export function prepareConfig(config: ExperimentConfig): ExperimentConfig {
  const resolved = resolveConfig(config);
  const { ifExists: _ifExists, ...sent } = config;
  return {
    ...sent,
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
  /** Status refreshes that failed after another outcome (each also logged). */
  refreshFailures = 0;
  readonly #hooks = new Map<HookPoint, Set<Hook>>();
  readonly #pauses = new Set<HookPoint>();
  /** Where the last step paused; continueStep() starts past it. */
  #pausedAt: HookPoint | undefined;
  /** stop() (or the kernel's Interrupt) was asked during a run driven from here. */
  #stopRequested = false;
  /** stop({ atStage: true }) or a SIGINT: a driven step stops at its next stage boundary. */
  #stopAtStage = false;

  constructor(
    readonly cluster: Cluster,
    status: ExperimentStatus,
  ) {
    this.#status = status;
  }

  get id(): string {
    return this.#status.id;
  }
  get name(): string {
    return this.#status.name;
  }

  /** Where it stands, in one line (as of the last answer): what `lab.experiments()` lists. */
  toString(): string {
    const s = this.#status;
    const state = s.busy
      ? `busy with ${s.busy}`
      : s.inProgress
        ? `step ${s.inProgress.step} in progress (${s.inProgress.stagesDone.join(", ")} done)`
        : "idle";
    return `Experiment(${s.name} ${s.id}: step ${s.step}/${s.totalSteps}, ${state}, on ${s.device}, ${s.runDir})`;
  }

  [inspect.custom](): string {
    return this.toString();
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
    // The last hook of a point takes its entry with it, so that steps go back to the controller
    // (where stop() and the progress counts work without the notebook in the loop).
    return () => {
      set.delete(hook);
      if (set.size === 0 && this.#hooks.get(point) === set) this.#hooks.delete(point);
    };
  }

  /** Whether steps must be driven from here: a hook or a pause point is set. */
  get #driven(): boolean {
    return this.#pauses.size > 0 || [...this.#hooks.values()].some((set) => set.size > 0);
  }

  /**
   * Makes step() stop at this point: it resolves with a Paused `{ step, pausedAt }` (the step in
   * progress; no metrics row yet, see isPaused()); continueStep() goes on.
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
  async step(options: RunOptions = {}): Promise<MetricsRow | Paused> {
    return this.#interruptible(async () => {
      if (!this.#driven) {
        // One step shows no progress bar unless asked (a bar per step() is noise in a notebook).
        const r = await this.#listening({ progress: false, ...options }, async () =>
          this.#op<MetricsRow | Paused>("step"),
        );
        if (isPaused(r)) this.#pausedAt = r.pausedAt;
        return r;
      }
      return this.#drive(0, undefined, options);
    });
  }

  /** Goes on with a step that paused (or whose hook threw), from where it stopped. */
  async continueStep(options: RunOptions = {}): Promise<MetricsRow | Paused> {
    const status = await this.refresh();
    if (!status.inProgress) throw new Error("continueStep: no step in progress; call step()");
    const done = status.inProgress.stagesDone;
    const next = stages.findIndex((s) => !done.includes(s));
    const pausedAt = this.#pausedAt;
    return this.#interruptible(() => this.#drive(next, pausedAt, options));
  }

  async #drive(
    from: number,
    skipPause: HookPoint | undefined,
    options: RunOptions,
  ): Promise<MetricsRow | Paused> {
    this.#pausedAt = undefined;
    const started = performance.now();
    let ended: StageResult | undefined;
    for (let i = from; i < stages.length; i++) {
      const stage = stages[i] as Stage;
      if (this.#stopAtStage && i > from) {
        const point = `before:${stage}` as const;
        this.#pausedAt = point;
        await this.refresh();
        return { step: this.stepsDone + 1, pausedAt: point };
      }
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
          return { step: this.stepsDone + 1, pausedAt: point };
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
      ...(row["perf/total_num_tokens"] !== undefined ? { tokens: row["perf/total_num_tokens"] } : {}),
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
        await this.#refreshAfter(`hook ${point} failed`);
        throw new HookError(point, error);
      }
    }
  }

  /**
   * `steps` steps (default: up to totalSteps); stop() ends it after the step in progress, the
   * kernel's Interrupt (or stop({ atStage: true })) at that step's next stage boundary. With
   * hooks or pause points, steps are driven from here (a pause ends the run early).
   */
  async run(steps?: number, options: RunOptions = {}): Promise<MetricsRow[]> {
    const n = steps ?? Math.max(this.#status.totalSteps - this.stepsDone, 0);
    return this.#interruptible(async () => {
      if (!this.#driven) {
        const rows = await this.#listening(options, () => this.#op<MetricsRow[]>("run", { steps: n }), n);
        // Stopped at a stage boundary (an Interrupt): the step is left in progress, as a pause.
        const left = this.#status.inProgress;
        const next = stages.find((stage) => !left?.stagesDone.includes(stage));
        if (left && next) this.#pausedAt = `before:${next}`;
        return rows;
      }
      const [wrapped, finish] = await this.#withDisplays(options, n);
      const rows: MetricsRow[] = [];
      try {
        for (let i = 0; i < n && !this.#stopRequested; i++) {
          const r = await this.#drive(0, undefined, wrapped);
          if (isPaused(r)) break;
          rows.push(r);
        }
      } finally {
        await finish();
      }
      return rows;
    });
  }

  /**
   * Runs a step() or run() that stop() and the kernel's Interrupt can end. In a notebook the
   * Interrupt is a SIGINT to the kernel process: tslab then abandons the cell, but the run would go
   * on in the controller. While one goes, a SIGINT asks it to stop at the step's next stage
   * boundary, whether the controller runs the step or it is driven from here (hooks set); the
   * step is left in progress (pausedAt says where; continueStep() finishes it, discard() drops
   * it). Outside a notebook, Ctrl-C keeps Node's default (exit) unless the program listens for
   * SIGINT itself.
   */
  async #interruptible<T>(fn: () => Promise<T>): Promise<T> {
    this.#stopRequested = false;
    this.#stopAtStage = false;
    const listen = inNotebook() || process.listenerCount("SIGINT") > 0;
    // tslab runs a cell's synchronous part under vm's breakOnSigint; a SIGINT listener added then
    // breaks the kernel's Interrupt (the kernel dies or hangs; tests/notebook/interrupt.test.ts).
    // A turn of the event loop first: the cell's synchronous part has returned by then.
    if (listen) await new Promise((resolve) => setImmediate(resolve));
    const onInterrupt = () => {
      void this.stop({ atStage: true }).catch(() => undefined);
    };
    if (listen) process.on("SIGINT", onInterrupt);
    try {
      return await fn();
    } finally {
      if (listen) process.off("SIGINT", onInterrupt);
    }
  }

  /**
   * Changes settings between steps (validated as a whole config; errors name the field), e.g.
   * `set({ lr: 5e-7 })`, `set({ rollout: { temperature: 0.8 } })`. Returns the settings in force.
   */
  async set(patch: Record<string, unknown>): Promise<ResolvedConfig> {
    return this.#op<ResolvedConfig>("set", { patch });
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

  /**
   * Runs a completed step again with the same seeds, from the nearest snapshot or checkpoint before
   * it (the steps between are run again first), and comes back. What this step's hooks changed
   * (setScores, keep) and the settings set() between the steps are applied again at the same
   * points; hooks themselves are not called again. Both metrics rows come back, with how many
   * responses are token for token the same.
   */
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
  async #withDisplays(options: RunOptions, steps: number): Promise<[RunOptions, () => Promise<void>]> {
    const wantProgress = options.progress ?? inNotebook();
    if (!wantProgress && !options.chart && !options.distributions) return [options, async () => undefined];
    const fetches: Promise<void>[] = [];
    const bar = wantProgress ? new Progress() : undefined;
    const startStep = this.stepsDone;
    const started = performance.now();
    let reward: number | undefined;
    let tokens = 0;
    let chart: ((row: MetricsRow) => void) | undefined;
    let last: ProgressState | undefined;
    let finishChart: (() => void) | undefined;
    if (options.chart) {
      const keys = options.chart;
      const log = MetricsLog.fromTable(await this.metrics());
      // The chart grows with the run: one redraw a second at most.
      const live = new LiveOutput(1000);
      finishChart = () => live.flush();
      loadPlotly();
      chart = (row) => {
        log.append(row);
        const panels = [...(typeof keys === "string" ? [keys] : keys), ...evaluationKeys(log)];
        live.show({
          "text/html": chartHtml(chartSpec(log, panels, { missing: "empty" }), { inline: false }),
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
        last = {
          stage: e.stage,
          step: Math.min(Math.max(e.step - startStep, 0), steps),
          totalSteps: Math.max(steps, 1),
          elapsedS: (performance.now() - started) / 1000,
          tokens,
          ...(reward !== undefined ? { reward } : {}),
        };
        bar?.update(last);
      },
      onMetrics: (row) => {
        options.onMetrics?.(row);
        chart?.(row);
        // The controller keeps the last few steps' rollouts: fetched now, this step is still there.
        if (options.distributions) fetches.push(this.#keepDistributions(row.step));
      },
    };
    return [
      wrapped,
      async () => {
        // Stopped inside a step (an Interrupt, a pause): the bar says where and what comes next.
        const left = this.#status.inProgress;
        const next = stages.find((stage) => !left?.stagesDone.includes(stage));
        if (bar && last && left && next) {
          bar.update({
            ...last,
            stage: `step ${left.step} stopped before ${next}: continueStep() or discard()`,
          });
        }
        bar?.done();
        finishChart?.();
        await Promise.all(fetches);
      },
    ];
  }

  readonly #distributions = new Map<number, Record<DistributionColumn, Float64Array>>();

  async #keepDistributions(step: number): Promise<void> {
    try {
      const table = await this.rollouts(step);
      const entry = {} as Record<DistributionColumn, Float64Array>;
      for (const name of distributionColumns) {
        const column = table.getChild(name);
        entry[name] = Float64Array.from({ length: table.numRows }, (_, i) => {
          const v = column?.get(i);
          return v === null || v === undefined ? Number.NaN : Number(v);
        });
      }
      this.#distributions.set(step, entry);
    } catch {
      // the step is no longer kept (the client fell behind): its distribution is missing, not made up
    }
  }

  /**
   * Per step, the values of one per-response column kept by `run(n, { distributions: true })`
   * (score, reward, response_length or advantage), for `notebook.distributions(...)`.
   */
  distributions(column: DistributionColumn = "score"): Map<number, Float64Array> {
    if (!distributionColumns.includes(column)) {
      throw new RangeError(
        `distributions: column ${JSON.stringify(column)}; allowed: ${distributionColumns.join(", ")}`,
      );
    }
    const out = new Map<number, Float64Array>();
    for (const [step, entry] of [...this.#distributions].sort((a, b) => a[0] - b[0])) {
      if (step <= this.stepsDone) out.set(step, entry[column]);
    }
    return out;
  }

  async #listening<T>(given: RunOptions, fn: () => Promise<T>, steps = 1): Promise<T> {
    const [options, finish] = await this.#withDisplays(given, steps);
    try {
      return await this.#subscribed(options, fn);
    } finally {
      await finish();
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
      await this.#refreshAfter("the call");
    }
  }

  /**
   * Refreshes the status after an outcome that must not be masked (a hook's error, a call's own
   * result or error): a failed refresh is logged and counted, and the status stays as it was.
   */
  async #refreshAfter(what: string): Promise<void> {
    try {
      await this.refresh();
    } catch (error) {
      this.refreshFailures++;
      console.warn(
        `tiller: ${this.id}: the status refresh after ${what} failed: ${(error as Error).message}`,
      );
    }
  }

  /**
   * Asks a run() or step() in progress to stop: after its current step, or with `atStage` at the
   * step's next stage boundary (what the kernel's Interrupt asks), leaving that step in progress
   * (`pausedAt`; continueStep() finishes it). A stop while nothing runs is dropped.
   */
  async stop(options: { atStage?: boolean } = {}): Promise<void> {
    this.#stopRequested = true;
    if (options.atStage) this.#stopAtStage = true;
    this.#status = await this.#op<ExperimentStatus>("stop", options.atStage ? { atStage: true } : {});
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

/**
 * Builds an experiment on the cluster's controller. One of the same name there already (a
 * notebook run again) is replaced, reused or refused as `config.ifExists` says (default replace).
 */
export async function createExperiment(cluster: Cluster, config: ExperimentConfig): Promise<Experiment> {
  const prepared = prepareConfig(config);
  const name = resolveConfig(config).name;
  const same = (await cluster.call("experiment.list", {})).filter((s) => s.name === name);
  const ifExists = config.ifExists ?? "replace";
  if (same.length > 0) {
    const [first] = same as [ExperimentStatus];
    if (ifExists === "reuse") return new Experiment(cluster, first);
    const describe = (s: ExperimentStatus) =>
      `${s.id} (step ${s.step}/${s.totalSteps}${s.busy ? `, busy with ${s.busy}` : ""})`;
    if (ifExists === "error") {
      throw new Error(
        `experiment "${name}" exists already: ${same.map(describe).join(", ")}; ` +
          'set ifExists: "replace" or "reuse", or another name',
      );
    }
    const busy = same.filter((s) => s.busy);
    if (busy.length > 0) {
      throw new Error(
        `experiment "${name}" is busy (${busy.map(describe).join(", ")}): stop() it first, or give this one another name`,
      );
    }
    for (const s of same) await cluster.call("experiment.call", { id: s.id, op: "close" });
  }
  const status = await cluster.call("experiment.create", { config: prepared });
  return new Experiment(cluster, status);
}

export interface ResumeOptions {
  totalSteps?: number;
  /** The layout to continue in (config.parallel's fields); default: the checkpoint's. */
  parallel?: ParallelLayout & { gpus?: number };
}

/** Continues an experiment from a checkpoint folder or a run folder (its newest checkpoint). */
export async function resumeExperiment(
  cluster: Cluster,
  path: string,
  options: ResumeOptions = {},
): Promise<Experiment> {
  const { parallel, ...rest } = options;
  const status = await cluster.call("experiment.create", {
    resume: absolute(path),
    ...rest,
    ...(parallel ? { parallel: parallel as Record<string, unknown> } : {}),
  });
  return new Experiment(cluster, status);
}
