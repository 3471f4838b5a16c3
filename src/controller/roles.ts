// The ranks of a run and the model roles on them (DESIGN.md §3, §4). A role (the actor, the
// reference) lives on every rank of the run's mesh; a call on it fans out to all ranks — every
// rank of a data-parallel replica gets the same arguments, encoded once — and the reply that stands
// for a replica comes from one rank of it (its leader). On one rank this is one call to rank 0.
import { replicaRanks } from "../native/dist.js";
import { type ImageInputs, type RouterStats, routerLayerStats } from "../native/model.js";
import type { WorkerCommand, WorkerCommandArgs, WorkerCommandResults } from "../protocol/messages.js";
import { concatImages } from "../rl/images.js";

/** Calls one worker command on one rank (the controller's pool, or the command table in-process). */
export type RankCall = <C extends WorkerCommand>(
  rank: number,
  command: C,
  args: WorkerCommandArgs<C>,
) => Promise<WorkerCommandResults[C]>;

/**
 * The same command to several ranks with the arguments encoded once (WorkerPool.callEach); `quiet`
 * ranks also get `quiet: true` (they run the command, collectives included, and send no data back);
 * `relay`: the data goes to ranks[0] only, which broadcasts it to the others over their replica group.
 */
export type RankCallEach = <C extends WorkerCommand>(
  ranks: number[],
  command: C,
  args: WorkerCommandArgs<C>,
  options?: { quiet?: ReadonlySet<number>; relay?: boolean },
) => Promise<WorkerCommandResults[C]>[];

/** A run's parallel layout, as config.parallel resolves it. */
export interface RunLayout {
  tensor: number;
  context: number;
  pipeline: number;
  expert: number;
  data: number;
  sequenceParallel: boolean;
  /** Pipeline stages: decoder layers of the first and the last stage (absent: an even split). */
  firstStageLayers?: number;
  lastStageLayers?: number;
}

/**
 * Waits for every promise and throws the failure that came first in time (the cause; a peer stuck
 * in a collective with a dead rank fails later, by its timeout), so no rank is still running a
 * command of this call when the caller goes on.
 */
export async function settleAll<T>(promises: Promise<T>[]): Promise<T[]> {
  let first: { error: unknown } | undefined;
  const watched = promises.map((p) =>
    p.catch((error: unknown) => {
      first ??= { error };
      throw error;
    }),
  );
  const settled = await Promise.allSettled(watched);
  if (first) throw first.error;
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}

export class RunRanks {
  readonly world: number;

  /**
   * Whether a replica's (large) arguments go to its first rank only, relayed by the workers over
   * the replica groups that dist.mesh makes. Default false; needs callEach.
   */
  relay = false;

  constructor(
    readonly layout: RunLayout,
    readonly call: RankCall,
    readonly callEach?: RankCallEach,
  ) {
    this.world = layout.tensor * layout.context * layout.pipeline * layout.data;
  }

  get multiRank(): boolean {
    return this.world > 1;
  }

  /**
   * Expert parallelism makes every forward collective over replicas (the expert group spans data
   * ranks): each replica then takes part in every call, with nothing of its own if need be, and
   * runs as many micro-batches as the others.
   */
  get lockstep(): boolean {
    return this.layout.expert > 1;
  }

  /** The world ranks of data-parallel replica d, ascending (replicaRanks). */
  replica(d: number): number[] {
    return replicaRanks(this.layout, d);
  }

  /** The rank whose reply stands for replica d: tensor and context rank 0 of the last stage. */
  leader(d: number): number {
    const { tensor, context, data, pipeline } = this.layout;
    return tensor * context * (d + data * (pipeline - 1));
  }

  #each<C extends WorkerCommand>(
    ranks: number[],
    command: C,
    args: WorkerCommandArgs<C>,
    quiet?: ReadonlySet<number>,
    relay = false,
  ): Promise<WorkerCommandResults[C]>[] {
    if (this.callEach) return this.callEach(ranks, command, args, { ...(quiet ? { quiet } : {}), relay });
    return ranks.map((r) =>
      this.call(r, command, (quiet?.has(r) ? { ...args, quiet: true } : args) as WorkerCommandArgs<C>),
    );
  }

  /** The same command on every rank of the run; every rank's reply, in rank order. */
  async all<C extends WorkerCommand>(
    command: C,
    args: WorkerCommandArgs<C>,
  ): Promise<WorkerCommandResults[C][]> {
    const ranks = Array.from({ length: this.world }, (_, r) => r);
    return settleAll(this.#each(ranks, command, args));
  }

  /**
   * Replica d's arguments (argsOf(d), or nothing to do when undefined: then no rank of it is
   * called) to all of its ranks; each replica leader's reply (undefined where not called).
   * `quietOthers`: the other ranks of a replica send no data back (the command must take `quiet`).
   */
  async replicas<C extends WorkerCommand>(
    command: C,
    argsOf: (d: number) => WorkerCommandArgs<C> | undefined,
    options: { quietOthers?: boolean } = {},
  ): Promise<(WorkerCommandResults[C] | undefined)[]> {
    const calls: Promise<unknown>[] = [];
    const leaders: (Promise<WorkerCommandResults[C]> | undefined)[] = [];
    for (let d = 0; d < this.layout.data; d++) {
      const args = argsOf(d);
      if (args === undefined) {
        leaders.push(undefined);
        continue;
      }
      const ranks = this.replica(d);
      const leader = this.leader(d);
      const quiet =
        options.quietOthers && ranks.length > 1 ? new Set(ranks.filter((r) => r !== leader)) : undefined;
      const each = this.#each(ranks, command, args, quiet, this.relay && ranks.length > 1);
      calls.push(...each);
      leaders.push(each[ranks.indexOf(leader)]);
    }
    await settleAll(calls);
    return Promise.all(leaders.map((p) => p ?? Promise.resolve(undefined)));
  }
}

/** Contiguous shares of n items over k replicas, the first n mod k one longer: [start, end) each. */
export function contiguousShares(n: number, k: number): [number, number][] {
  const base = Math.floor(n / k);
  const extra = n % k;
  const out: [number, number][] = [];
  let at = 0;
  for (let d = 0; d < k; d++) {
    const size = base + (d < extra ? 1 : 0);
    out.push([at, at + size]);
    at += size;
  }
  return out;
}

/** Router statistics of several replicas' tokens as one: counts summed, entropy token-weighted. */
export function mergeRouterStats(parts: RouterStats[]): RouterStats {
  const present = parts.filter((p) => p.layers.length > 0);
  if (present.length <= 1) return present[0] ?? parts[0] ?? { tokens: 0, layers: [] };
  const tokens = present.reduce((n, p) => n + p.tokens, 0);
  const layers = (present[0] as RouterStats).layers.map((_, l) => {
    const counts = new Int32Array((present[0] as RouterStats).layers[l]?.tokensPerExpert.length ?? 0);
    let entropySum = 0;
    let dropped = 0;
    for (const p of present) {
      const layer = p.layers[l];
      if (!layer) continue;
      dropped += layer.droppedTokens;
      layer.tokensPerExpert.forEach((c, e) => {
        counts[e] = (counts[e] ?? 0) + c;
      });
      entropySum += layer.entropy * p.tokens;
    }
    // The parts' dropped counts add up (each was counted against its own top-k).
    return { ...routerLayerStats(counts, entropySum, tokens, 0), droppedTokens: dropped };
  });
  return { tokens, layers };
}

/** One packed micro-batch of sequences (prompt + response each). */
export interface PackedSequences {
  tokens: Int32Array;
  cuSeqlens: Int32Array;
  routedExperts?: Int32Array;
  /** Vision-language models: the sequences' images, in token order. */
  images?: ImageInputs;
}

type GenerateArgs = Omit<
  WorkerCommandArgs<"model.generate">,
  "name" | "prompts" | "sequenceOffset" | "quiet" | "images"
>;
type PolicyMicroBatch = WorkerCommandArgs<"model.policyUpdate">["microBatches"][number];
type PolicyUpdateResult = WorkerCommandResults["model.policyUpdate"];

/**
 * A model of the run (the actor, the reference) on every rank of its mesh. Generation splits the
 * prompts over the data-parallel replicas; logprobs and updates take one list of micro-batches per
 * replica (the caller balances them); everything else runs on every rank alike.
 */
export class ModelRole {
  /** The KV cache of the last generate call on the busiest replica's leader. */
  lastKvCacheBytes = 0;

  constructor(
    readonly name: string,
    readonly ranks: RunRanks,
  ) {}

  /** Loads the folder on every rank (each reading its slices under the mesh); the whole model's size. */
  async load(
    dir: string,
    dtype: WorkerCommandArgs<"model.load">["dtype"],
    extra: { freezeVision?: boolean; mesh?: string } = {},
  ): Promise<WorkerCommandResults["model.load"]> {
    // A named mesh (the rollout's) is made on every rank whatever its size: load under it then.
    const sharded = this.ranks.multiRank || extra.mesh !== undefined ? { sharded: true } : {};
    const [first] = await this.ranks.all("model.load", {
      name: this.name,
      dir,
      ...(dtype ? { dtype } : {}),
      ...sharded,
      ...extra,
    });
    return first as WorkerCommandResults["model.load"];
  }

  /** A command that every rank runs alike (optimizer, settings, save, free); rank 0's reply. */
  async everywhere<
    C extends
      | "model.initOptimizer"
      | "model.setTraining"
      | "model.offload"
      | "model.onload"
      | "model.save"
      | "model.saveOptimizer"
      | "model.loadOptimizer"
      | "model.free",
  >(command: C, args: Omit<WorkerCommandArgs<C>, "name">): Promise<WorkerCommandResults[C]> {
    const [first] = await this.ranks.all(command, { ...args, name: this.name } as WorkerCommandArgs<C>);
    return first as WorkerCommandResults[C];
  }

  /**
   * Each replica generates a contiguous share of the prompts; sampling is batch-invariant
   * (sequenceOffset), so the tokens are those one rank given every prompt would sample.
   */
  async generate(
    prompts: Int32Array[],
    options: GenerateArgs,
    images: readonly (ImageInputs | undefined)[] = [],
  ): Promise<WorkerCommandResults["model.generate"]["generations"]> {
    const shares = contiguousShares(prompts.length, this.ranks.layout.data);
    const replies = await this.ranks.replicas(
      "model.generate",
      (d) => {
        const [start, end] = shares[d] as [number, number];
        if (end === start && !this.ranks.lockstep) return undefined;
        const share = concatImages(images.slice(start, end));
        return {
          ...options,
          name: this.name,
          prompts: prompts.slice(start, end),
          sequenceOffset: start,
          ...(share ? { images: share } : {}),
        };
      },
      { quietOthers: true },
    );
    this.lastKvCacheBytes = Math.max(0, ...replies.map((r) => r?.kvCacheBytes ?? 0));
    return replies.flatMap((r) => r?.generations ?? []);
  }

  /**
   * Logprobs and entropy of micro-batches, perReplica[d] on replica d (replicas in parallel, each
   * one's micro-batches in order); the results in the same shape.
   */
  async logprobs(
    perReplica: PackedSequences[][],
    temperature: number,
  ): Promise<WorkerCommandResults["model.logprobs"][][]> {
    this.#checkLockstep(perReplica, "logprobs");
    const out = perReplica.map(() => [] as WorkerCommandResults["model.logprobs"][]);
    const rounds = Math.max(0, ...perReplica.map((m) => m.length));
    for (let k = 0; k < rounds; k++) {
      const replies = await this.ranks.replicas(
        "model.logprobs",
        (d) => {
          const mb = perReplica[d]?.[k];
          return mb ? { name: this.name, ...mb, temperature } : undefined;
        },
        { quietOthers: true },
      );
      replies.forEach((r, d) => {
        if (r) out[d]?.push(r);
      });
    }
    return out;
  }

  /**
   * One optimizer update: replica d's micro-batches on its ranks, the step collective over all.
   * counts are the whole mini-batch's on every replica, so the summed gradients, losses and metrics
   * are the mini-batch's. The merged reply: sums of the per-replica sums, the slowest replica's times.
   */
  async policyUpdate(
    perReplica: PolicyMicroBatch[][],
    rest: Omit<WorkerCommandArgs<"model.policyUpdate">, "name" | "microBatches">,
  ): Promise<PolicyUpdateResult & { forwardPerReplica: NonNullable<PolicyUpdateResult["forward"]>[] }> {
    this.#checkLockstep(perReplica, "policyUpdate");
    const replies = (await this.ranks.replicas("model.policyUpdate", (d) => ({
      ...rest,
      name: this.name,
      microBatches: perReplica[d] ?? [],
    }))) as PolicyUpdateResult[];
    const [first, ...others] = replies as [PolicyUpdateResult, ...PolicyUpdateResult[]];
    // On-policy micro-batches (sent without oldLogprobs): each replica's forward logprobs, its micro-batches in order.
    const { forward: _, ...firstRest } = first;
    const merged = {
      ...firstRest,
      metrics: { ...first.metrics },
      forwardPerReplica: replies.map((r) => r.forward ?? []),
    };
    const metrics = merged.metrics as unknown as Record<string, number>;
    for (const r of others) {
      merged.loss += r.loss;
      merged.tokens += r.tokens;
      merged.microBatches += r.microBatches;
      merged.backwardS = Math.max(merged.backwardS, r.backwardS);
      merged.optimizerS = Math.max(merged.optimizerS, r.optimizerS);
      for (const [k, v] of Object.entries(r.metrics as unknown as Record<string, number>)) {
        metrics[k] = (metrics[k] ?? 0) + v;
      }
    }
    return merged;
  }

  #checkLockstep(perReplica: unknown[][], what: string): void {
    if (!this.ranks.lockstep) return;
    const counts = perReplica.map((m) => m.length);
    if (counts.some((c) => c !== counts[0])) {
      throw new Error(
        `${what}: expert parallelism needs the same number of micro-batches on every replica, got ${counts.join(", ")} ` +
          "(give each replica as many sequences: the batch a multiple of parallel.data)",
      );
    }
  }

  /**
   * Every rank's bytes (model.memory): now, and before the last update's optimizer step (with its
   * gradients). In rank order.
   */
  async memory(): Promise<WorkerCommandResults["model.memory"][]> {
    return this.ranks.all("model.memory", { name: this.name });
  }

  /**
   * This model's parameters from `source`'s weights (the same model under another layout of the
   * same ranks), on every rank together; every rank's counts, in rank order.
   */
  async reshardFrom(
    source: ModelRole,
    options: { bucketBytes: number; verify: boolean },
  ): Promise<WorkerCommandResults["model.reshard"][]> {
    return this.ranks.all("model.reshard", { name: this.name, from: source.name, ...options });
  }

  /** Router statistics since the last call, over every replica's tokens. */
  async routerStats(): Promise<RouterStats> {
    const replies = await this.ranks.replicas("model.routerStats", () => ({ name: this.name }));
    return mergeRouterStats(replies.filter((r): r is RouterStats => r !== undefined));
  }

  /** The residual stream at a layer for packed tokens, computed by the first replica. */
  async activations(
    args: Omit<WorkerCommandArgs<"model.activations">, "name">,
  ): Promise<WorkerCommandResults["model.activations"]> {
    // In lockstep (expert parallelism) every replica runs the forward with it.
    const [first] = await this.ranks.replicas("model.activations", (d) =>
      d === 0 || this.ranks.lockstep ? { ...args, name: this.name } : undefined,
    );
    return first as WorkerCommandResults["model.activations"];
  }
}

/**
 * perf/memory/* of a step from every rank's model.memory: per kind the largest rank's bytes
 * (parameters, gradients and optimizer state as they stood before the optimizer step, buffers, the
 * update's activation peak: its allocator peak above its start less its gradients), and verl's
 * perf/max_memory_allocated_gb / perf/max_memory_reserved_gb (GiB: the allocator's peak during this
 * update's forwards and backwards, and what it reserves; on CPU every live CPU tensor counted).
 */
export function memoryMetrics(ranks: WorkerCommandResults["model.memory"][]): Record<string, number> {
  const out: Record<string, number> = {};
  const max = (key: string, v: number | undefined) => {
    if (v === undefined) return;
    out[key] = Math.max(out[key] ?? 0, v);
  };
  for (const r of ranks) {
    const m = r.update ?? r.now;
    max("perf/memory/parameters_bytes", m.parameters);
    max("perf/memory/gradients_bytes", m.gradients);
    max("perf/memory/optimizer_bytes", m.optimizer);
    max("perf/memory/buffers_bytes", m.buffers);
    max("perf/memory/activations_peak_bytes", r.updateActivationsPeak);
    if (m.device) {
      max("perf/max_memory_allocated_gb", m.device.peak / 2 ** 30);
      max("perf/max_memory_reserved_gb", m.device.reserved / 2 ** 30);
    }
  }
  return out;
}
