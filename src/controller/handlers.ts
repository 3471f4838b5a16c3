// What the controller answers: one handler per client method, keyed by the method's name (search
// for "initProcessGroup:" to find it). Arguments arrive checked against protocol/messages.ts.
import type { ClientMethod, ClientMethodResults, ControllerState, RankResult } from "../protocol/messages.js";
import { type clientMethodArgs, workerCommandArgs } from "../protocol/messages.js";
import type { Infer } from "../protocol/schema.js";
import type { WorkerPool } from "./pool.js";
import { WorkerCallError } from "./pool.js";

/** What handlers may touch: the pool, the state view, and the shutdown switch. */
export interface ControllerContext {
  pool: WorkerPool;
  state(): ControllerState;
  processGroup: ControllerState["processGroup"];
  shutdown(): void;
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

export const handlers: { [M in ClientMethod]: Handler<M> } = {
  status: async (ctx) => ctx.state(),

  echo: async (_ctx, args) => args,

  run: async (ctx, args) => {
    const ranks = args.ranks ?? ctx.pool.ranks();
    // Checked here too, so nothing malformed is sent on to a worker.
    const commandArgs = workerCommandArgs[args.command](args.args ?? {}, "args.args");
    return onRanks(ctx, ranks, args.command, () => commandArgs, args.timeoutMs);
  },

  initProcessGroup: async (ctx, args) => {
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
    const backend = args.backend ?? (ctx.pool.summaries()[0]?.device.startsWith("cuda") ? "nccl" : "gloo");
    // Rank 0 hosts the c10d store, on a port free on its own host.
    const storePort = ((await ctx.pool.call(0, "worker.freePort", {})) as { port: number }).port;
    const storeHost = ctx.pool.host(0) ?? "127.0.0.1";
    await onRanks(ctx, ranks, "dist.init", (rank) => ({ rank, worldSize, storeHost, storePort, backend }));
    ctx.processGroup = { backend, storeHost, storePort };
    return ctx.processGroup;
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
