// What the controller answers: one handler per client method, keyed by the method's name (search
// for "initProcessGroup:" to find it). Arguments arrive checked against protocol/messages.ts.

import { gpuTypes } from "../plan/gpus.js";
import { type PlanConfig, plan } from "../plan/index.js";
import type {
  ClientMethod,
  ClientMethodResults,
  ControllerState,
  EventMap,
  EventTopic,
  ExperimentStatus,
  RankResult,
  WorkerInfo,
} from "../protocol/messages.js";
import { type clientMethodArgs, workerCommandArgs } from "../protocol/messages.js";
import { type Infer, ValidationError } from "../protocol/schema.js";
import { type ResolvedConfig, resolveConfig } from "../rl/config.js";
import { readCheckpointConfig } from "../util/checkpoint.js";
import { UserError } from "../util/errors.js";
import { type Access, AccessError } from "./access.js";
import {
  ExperimentRun,
  type RankCall,
  type RankCallEach,
  type StageName,
  type StepBatch,
  stageNames,
} from "./experiment.js";
import type { WorkerPool } from "./pool.js";
import { relayWanted, WorkerCallError } from "./pool.js";

/** What handlers may touch: the pool, the state view, and the shutdown switch. */
export interface ControllerContext {
  pool: WorkerPool;
  state(): ControllerState;
  processGroup: ControllerState["processGroup"];
  /** Experiments by id. */
  experiments: Map<string, ExperimentRun>;
  publish<T extends EventTopic>(topic: T, data: EventMap[T]): void;
  shutdown(): void;
  /** What clients may reach on this host (paths, reward modules). */
  access: Access;
}

/** The file-system paths each worker command takes, by field. */
const commandPaths: Partial<Record<string, string[]>> = {
  "model.load": ["dir"],
  "model.save": ["dir"],
  "model.saveOptimizer": ["file"],
  "model.loadOptimizer": ["file"],
};

/** Every path and module in a resolved config, checked against what the client may reach. */
function checkConfigAccess(
  access: Access,
  config: ResolvedConfig,
  field: string,
  options: { runDir: boolean },
): void {
  access.path(`${field}.model.path`, config.model.path);
  config.data.train.forEach((f, i) => {
    access.path(`${field}.data.train[${i}]`, f);
  });
  if (options.runDir) access.path(`${field}.runDir`, config.runDir);
  if (config.reward.fn) access.rewardModule(`${field}.reward.fn.module`, config.reward.fn.module);
}

let experimentCounter = 0;

function experimentStatus(id: string, run: ExperimentRun): ExperimentStatus {
  const b = run.batch;
  const inProgress = b && b.step === run.step + 1 && !b.stagesDone.includes("sync") ? b : undefined;
  return {
    id,
    name: run.config.name,
    runDir: run.runDir,
    step: run.step,
    totalSteps: run.config.totalSteps,
    busy: run.busy ?? null,
    inProgress: inProgress
      ? { step: inProgress.step, stagesDone: [...inProgress.stagesDone], samples: inProgress.samples.length }
      : null,
    datasetSize: run.datasetSize,
    promptsFilteredOut: run.promptsFilteredOut,
    device: run.device,
    warnings: [...run.warnings],
  };
}

/** What a stage answers: where the step stands, without the per-token arrays (rollouts() has them). */
function batchSummary(batch: StepBatch) {
  return {
    step: batch.step,
    stagesDone: [...batch.stagesDone],
    samples: batch.samples.length,
    rounds: batch.rounds,
    timings: batch.timings,
    metrics: batch.metrics,
  };
}

function experimentOf(ctx: ControllerContext, id: string): ExperimentRun {
  const run = ctx.experiments.get(id);
  if (!run) {
    throw new ValidationError(
      "args.id",
      `no experiment ${JSON.stringify(id)}; this controller holds: ${[...ctx.experiments.keys()].join(", ") || "none"}`,
    );
  }
  return run;
}

function isStage(op: string): op is StageName {
  return (stageNames as readonly string[]).includes(op);
}

type Handler<M extends ClientMethod> = (
  ctx: ControllerContext,
  args: Infer<(typeof clientMethodArgs)[M]>,
) => Promise<ClientMethodResults[M]>;

/** Runs a command on ranks in parallel; the first failure (lowest rank) is the reply. */
async function onRanks(
  ctx: ControllerContext,
  ranks: number[],
  command: Parameters<WorkerPool["call"]>[1],
  args: (rank: number) => unknown,
  timeoutMs?: number,
): Promise<RankResult[]> {
  if (ranks.length === 0) {
    throw new WorkerCallError({ code: "NO_WORKERS", message: "no workers have joined yet", command });
  }
  const settled = await Promise.allSettled(ranks.map((r) => ctx.pool.call(r, command, args(r), timeoutMs)));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
  if (failed) throw failed.reason;
  return settled.map((s, i) => ({
    rank: ranks[i] as number,
    result: (s as PromiseFulfilledResult<unknown>).value,
  }));
}

/** dist.init on every rank of the pool (rank 0 hosts the c10d store); the group's address. */
async function setUpProcessGroup(
  ctx: ControllerContext,
  requested: "gloo" | "nccl" | undefined,
): Promise<NonNullable<ControllerState["processGroup"]>> {
  const worldSize = ctx.pool.options.worldSize;
  const ranks = Array.from({ length: worldSize }, (_, r) => r);
  const missing = ranks.filter((r) => !ctx.pool.ranks().includes(r));
  if (missing.length > 0) {
    throw new WorkerCallError({
      code: "NO_WORKERS",
      message: `ranks ${missing.join(", ")} of ${worldSize} have not joined; wait for them (status) or respawn`,
      command: "dist.init",
    });
  }
  const backend = requested ?? (ctx.pool.summaries()[0]?.device.startsWith("cuda") ? "nccl" : "gloo");
  // Rank 0 hosts the c10d store, on a port free on its own host.
  const storePort = ((await ctx.pool.call(0, "worker.freePort", {})) as { port: number }).port;
  const storeHost = ctx.pool.host(0) ?? "127.0.0.1";
  await onRanks(ctx, ranks, "dist.init", (rank) => ({ rank, worldSize, storeHost, storePort, backend }));
  ctx.processGroup = { backend, storeHost, storePort };
  return ctx.processGroup;
}

export const handlers: { [M in ClientMethod]: Handler<M> } = {
  status: async (ctx) => ctx.state(),

  echo: async (_ctx, args) => args,

  run: async (ctx, args) => {
    const ranks = args.ranks ?? ctx.pool.ranks();
    // Checked here too, so nothing malformed is sent on to a worker.
    if (args.command === "dist.init" && ctx.access.confined) {
      // It names a host for every worker to connect to; initProcessGroup picks rank 0's instead.
      throw new AccessError(
        "args.command",
        "remote clients set up the process group with initProcessGroup, not dist.init",
      );
    }
    const commandArgs = workerCommandArgs[args.command](args.args ?? {}, "args.args");
    for (const key of commandPaths[args.command] ?? []) {
      const value = (commandArgs as Record<string, unknown>)[key];
      if (typeof value === "string") ctx.access.path(`args.args.${key}`, value);
    }
    return onRanks(ctx, ranks, args.command, () => commandArgs, args.timeoutMs);
  },

  initProcessGroup: async (ctx, args) => setUpProcessGroup(ctx, args.backend),

  plan: async (ctx, args) => {
    const config = { ...args.config } as unknown as PlanConfig;
    if (typeof config.model === "string") ctx.access.path("config.model", config.model);
    const recipe = config.recipe as { model?: { path?: unknown } } | string | undefined;
    if (typeof recipe === "object" && typeof recipe.model?.path === "string") {
      ctx.access.path("config.recipe.model.path", recipe.model.path);
    }
    if (config.gpus === undefined && config.recipe === undefined) config.gpus = ctx.pool.options.worldSize;
    const device = ctx.pool.summaries().find((w) => w.device.startsWith("cuda"));
    // CPU workers run the CPU kernels: their activation model unless the config names one.
    if (config.device === undefined && !device) config.device = "cpu";
    if (config.gpu === undefined) {
      // The type the workers report ("NVIDIA H200" is the H200-141GB entry).
      const reported = (await ctx.pool.call(device?.rank ?? 0, "worker.info", {})) as WorkerInfo;
      const model = reported.deviceName?.replace(/^NVIDIA\s+/, "").split(/\s+/)[0];
      const known = model ? Object.keys(gpuTypes).find((name) => name.split("-")[0] === model) : undefined;
      if (!known) {
        throw new ValidationError(
          "config.gpu",
          `the workers report ${reported.deviceName ? `"${reported.deviceName}"` : "no GPU"}, which is not a known type; name one of ${Object.keys(gpuTypes).join(", ")} or give a custom entry`,
        );
      }
      config.gpu = known;
    }
    try {
      return plan(config);
    } catch (error) {
      const field = (error as { field?: unknown }).field;
      if (typeof field === "string")
        throw new ValidationError(`config.${field}`, (error as Error).message.slice(field.length + 2));
      throw error;
    }
  },

  "experiment.create": async (ctx, args) => {
    if ((args.config === undefined) === (args.resume === undefined)) {
      throw new ValidationError(
        "args",
        "give either config (a new experiment) or resume (a checkpoint or run folder)",
      );
    }
    if (!ctx.pool.ranks().includes(0)) {
      throw new WorkerCallError({
        code: "NO_WORKERS",
        message: "rank 0 has not joined; wait for the workers (status)",
        command: "experiment.create",
      });
    }
    if (args.resume) {
      ctx.access.path("args.resume", args.resume);
      // The saved config names the model and data to read again; the run writes into the folder
      // resumed from (checked above), not the runDir recorded in it.
      if (ctx.access.confined) {
        const saved = await readCheckpointConfig<ResolvedConfig>(args.resume);
        checkConfigAccess(ctx.access, saved.config, `${saved.dir}/state.json: config`, { runDir: false });
      }
    }
    const config = args.config ? resolveConfig(args.config as never) : undefined;
    if (config) checkConfigAccess(ctx.access, config, "config", { runDir: true });
    const info = (await ctx.pool.call(0, "worker.info", {})) as WorkerInfo;
    const call: RankCall = (rank, command, a) => ctx.pool.call(rank, command, a) as never;
    const callEach: RankCallEach = (ranks, command, a, options) =>
      ctx.pool.callEach(ranks, command, a, options) as never;
    if (args.parallel && !args.resume) {
      throw new ValidationError("args.parallel", "a new experiment takes its layout from config.parallel");
    }
    const gpus = args.resume
      ? args.parallel
        ? resolveConfig({
            ...(await readCheckpointConfig<ResolvedConfig>(args.resume)).config,
            parallel: args.parallel,
          } as never).parallel.gpus
        : (await readCheckpointConfig<ResolvedConfig>(args.resume)).config.parallel.gpus
      : (config as ResolvedConfig).parallel.gpus;
    if (gpus > 1) {
      // One mesh per run over the whole process group: a second multi-rank run would replace it.
      const other = [...ctx.experiments].find(([, r]) => r.config.parallel.gpus > 1);
      if (other) {
        throw new UserError(
          "BUSY",
          `experiment ${other[0]} holds the workers' mesh (parallel.gpus ${other[1].config.parallel.gpus}); close it before creating another multi-rank experiment`,
        );
      }
      if (!ctx.processGroup && ctx.pool.options.worldSize === gpus) await setUpProcessGroup(ctx, undefined);
    }
    const id = `${(args.config?.name as string | undefined) ?? "run"}-${++experimentCounter}`;
    const hooks = {
      progress: (e: Parameters<NonNullable<import("./experiment.js").ExperimentHooks["progress"]>>[0]) =>
        ctx.publish("experiment.progress", { id, ...e }),
      metrics: (row: Record<string, number>) => ctx.publish("experiment.metrics", { id, row }),
    };
    const options = {
      hooks,
      callEach,
      relay: relayWanted(ctx.pool),
      workers: ctx.pool.options.worldSize,
      device: info.device,
      ...(info.deviceName ? { deviceName: info.deviceName } : {}),
    };
    const run = args.resume
      ? await ExperimentRun.resume(args.resume, call, {
          ...options,
          ...(args.totalSteps ? { totalSteps: args.totalSteps } : {}),
          ...(args.parallel ? { parallel: args.parallel } : {}),
        })
      : await ExperimentRun.create(config as ResolvedConfig, call, options);
    ctx.experiments.set(id, run);
    return experimentStatus(id, run);
  },

  "experiment.list": async (ctx) => [...ctx.experiments].map(([id, run]) => experimentStatus(id, run)),

  "experiment.call": async (ctx, args) => {
    const run = experimentOf(ctx, args.id);
    const op = args.op;
    // Reads and stop() answer while a long operation runs; everything else takes its turn.
    switch (op) {
      case "state":
        return experimentStatus(args.id, run);
      case "stop":
        run.requestStop(args.atStage === true);
        return experimentStatus(args.id, run);
      case "metrics":
        return run.metrics.table();
      case "rollouts":
        return run.rollouts(args.step);
      default:
        break;
    }
    return run.exclusive(op, async () => {
      if (isStage(op)) {
        const summary = batchSummary(await run.stage(op));
        // The step ends with sync: its metrics row comes back with it.
        return op === "sync" ? { ...summary, row: run.metrics.last() } : summary;
      }
      switch (op) {
        case "step":
          return run.interruptibleStep();
        case "run":
          return run.run(args.steps);
        case "discard":
          run.discard();
          return experimentStatus(args.id, run);
        case "save":
          return { dir: await run.save() };
        case "export":
          if (!args.dir) throw new ValidationError("args.dir", "export needs the folder to write");
          return { dir: await run.export(ctx.access.path("args.dir", args.dir)) };
        case "set":
          return run.set(args.patch ?? {});
        case "snapshot":
          return run.snapshot();
        case "restore":
          if (!args.snapshot)
            throw new ValidationError("args.snapshot", "restore needs a snapshot id or a checkpoint folder");
          if (!/^snap-\d+-step-\d+$/.test(args.snapshot)) ctx.access.path("args.snapshot", args.snapshot);
          return run.restore(args.snapshot);
        case "replay": {
          if (!args.step) throw new ValidationError("args.step", "replay needs the step to run again");
          const r = await run.replay(args.step);
          return r;
        }
        case "validate":
          return run.validate();
        case "batch":
          return run.batchTable();
        case "patch":
          return batchSummary(
            run.patchBatch({
              ...(args.scores ? { scores: args.scores } : {}),
              ...(args.keep ? { keep: args.keep } : {}),
            }),
          );
        case "activations":
          if (typeof args.layer !== "string" && typeof args.layer !== "number") {
            throw new ValidationError("args.layer", 'a layer name ("model.layers.N", "model.norm") or index');
          }
          return run.activations(args.layer, args.step, args.rows ? Array.from(args.rows) : undefined);
        case "close":
          ctx.experiments.delete(args.id);
          await run.close();
          return { closed: true };
        default:
          throw new ValidationError("args.op", `unknown op ${JSON.stringify(op)}`);
      }
    });
  },

  respawn: async (ctx) => {
    const present = new Set(ctx.pool.ranks());
    const ranks = ctx.pool.localRanks.filter((r) => !present.has(r));
    for (const rank of ranks) ctx.pool.spawnLocal(rank);
    return { ranks };
  },

  shutdown: async (ctx) => {
    // After the reply is queued: the client learns the controller heard it.
    setImmediate(() => ctx.shutdown());
    return { stopping: true };
  },
};
