// An experiment as a notebook holds it: typed calls to the controller's experiment (each stage
// alone, step(), run(n) with live progress), Arrow tables back for metrics and rollouts. The
// experiment itself lives in the controller: a kernel restart loses only this handle; reattach
// with cluster.experiments().
import { isAbsolute, resolve } from "node:path";
import type { Table } from "apache-arrow";
import type { ExperimentOp, ExperimentProgress, ExperimentStatus } from "../protocol/messages.js";
import { type ExperimentConfig, resolveConfig } from "../rl/config.js";
import type { Cluster } from "./client.js";

/** A stage's answer: where the step stands (per-token data stays in the controller; see rollouts()). */
export interface StageResult {
  step: number;
  stagesDone: string[];
  samples: number;
  rounds: number;
  timings: Record<string, number>;
  metrics: Record<string, number>;
}

export type MetricsRow = { step: number } & Record<string, number>;

export interface RunOptions {
  /** Called for every stage started and every step ended. */
  onProgress?: (event: ExperimentProgress) => void;
  /** Called with each step's metrics row as it is written. */
  onMetrics?: (row: MetricsRow) => void;
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
    data: { ...config.data, train: resolved.data.train.map(absolute) },
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

  /** One whole step; its metrics row. */
  async step(options: RunOptions = {}): Promise<MetricsRow> {
    return this.#listening(options, async () => this.#op<MetricsRow>("step"));
  }

  /** `steps` steps (default: up to totalSteps); stop() ends it after the step in progress. */
  async run(steps?: number, options: RunOptions = {}): Promise<MetricsRow[]> {
    return this.#listening(options, () =>
      this.#op<MetricsRow[]>("run", steps === undefined ? {} : { steps }),
    );
  }

  async #listening<T>(options: RunOptions, fn: () => Promise<T>): Promise<T> {
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
