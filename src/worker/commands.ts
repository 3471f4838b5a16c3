// The worker's command table: one entry per worker command (the names in protocol/messages.ts),
// each a plain async function over the engine. Arguments arrive already checked against the
// command's schema; the engine's own checks still run behind these.
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { freemem, hostname, totalmem } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Critic, type ValueLossConfig } from "../native/critic.js";
import { Mesh, ProcessGroup, replicaOf, replicaRanks } from "../native/dist.js";
import { engineInfo } from "../native/engine.js";
import { inspectCheckpoint } from "../native/io.js";
import { type MemoryBytes, Model, type OptimizerOptions } from "../native/model.js";
import {
  checkPolicyLossConfig,
  type PolicyLossConfig,
  type PolicyLossMetrics,
} from "../native/policy-loss.js";
import type {
  WorkerCommand,
  WorkerCommandArgs,
  WorkerCommandResults,
  WorkerInfo,
} from "../protocol/messages.js";

/** An error whose code travels to the client as is. */
export class CommandError extends Error {
  constructor(
    readonly code: "NOT_AVAILABLE" | "WORKER_ERROR" | "NOT_FOUND" | "BAD_ARGS",
    message: string,
  ) {
    super(message);
  }
}

/** A model folder's config.json; read after Model.load succeeded, so it is there and is JSON. */
function readJsonFile(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
}

/**
 * Refuses a token id outside the model's vocabulary, naming its position (the engine would only
 * say "index out of range in self"). Returns the state, so calls can chain.
 */
function checkTokenIds(
  state: WorkerState,
  name: string,
  ids: Int32Array | BigInt64Array,
  field: string,
): WorkerState {
  const vocab = state.vocabSizes.get(name);
  if (vocab === undefined) return state;
  for (let i = 0; i < ids.length; i++) {
    const id = Number(ids[i]);
    if (id < 0 || id >= vocab) {
      throw new CommandError(
        "BAD_ARGS",
        `${field}[${i}]: token id ${id} is outside the vocabulary of model "${name}" (0 to ${vocab - 1})`,
      );
    }
  }
  return state;
}

/** What lives in one worker between commands. */
export class WorkerState {
  readonly models = new Map<string, Model>();
  /** Each model's vocab_size (from its config.json), to refuse out-of-vocabulary ids by position. */
  readonly vocabSizes = new Map<string, number>();
  /** Each model's memory before its last update's optimizer step (gradients still held). */
  readonly updateMemory = new Map<string, MemoryBytes>();
  /** The last update's allocator peak above its start, less its gradients (model.memory). */
  readonly updateActivations = new Map<string, number>();
  /** PPO value models, by name. */
  readonly critics = new Map<string, Critic>();
  readonly device: string;
  /** The engine's process group among all workers, from dist.init on. */
  processGroup: ProcessGroup | undefined;
  /** The run's mesh over that group, from dist.mesh on; sharded models load under it. */
  mesh: Mesh | undefined;
  /** This rank's data-parallel replica (tensor × context × pipeline ranks) when it has several: relays go over it. */
  replicaGroup: ProcessGroup | undefined;
  /** Meshes beside the run's, by key (dist.mesh with a key: the rollout layout). */
  readonly namedMeshes = new Map<string, Mesh>();
  /** Meshes made on this process group so far (every rank makes the same ones, in order). */
  meshes = 0;

  constructor(readonly host: string) {
    // One visible GPU per worker (the controller sets CUDA_VISIBLE_DEVICES), so it is always cuda:0.
    // An empty CUDA_VISIBLE_DEVICES (a CPU worker) hides every GPU: the engine (libtorch, ~400 MB
    // resident) then loads with the first command that needs it, not at start.
    this.device =
      process.env.CUDA_VISIBLE_DEVICES === "" ? "cpu" : engineInfo().cudaAvailable ? "cuda:0" : "cpu";
  }

  model(name: string): Model {
    const model = this.models.get(name);
    if (!model) {
      const loaded = [...this.models.keys()];
      throw new CommandError(
        "NOT_FOUND",
        `args.name: no model "${name}" on this worker; loaded: ${loaded.length ? loaded.join(", ") : "none"} (use model.load)`,
      );
    }
    return model;
  }

  info(): WorkerInfo {
    const device =
      this.device === "cpu" ? undefined : engineInfo().devices.find((d) => d.device === this.device);
    return {
      ...(this.mesh
        ? { mesh: { describe: this.mesh.info.describe, coordinates: this.mesh.coordinates } }
        : {}),
      pid: process.pid,
      hostname: hostname(),
      device: this.device,
      ...(device?.name ? { deviceName: device.name } : {}),
      memory: {
        hostTotalBytes: totalmem(),
        hostFreeBytes: freemem(),
        rssBytes: process.memoryUsage().rss,
        ...(device?.totalMemoryBytes ? { deviceTotalBytes: device.totalMemoryBytes } : {}),
      },
      models: [...this.models.keys()],
    };
  }

  critic(name: string): Critic {
    const critic = this.critics.get(name);
    if (!critic) {
      throw new CommandError(
        "WORKER_ERROR",
        `args.name: no critic "${name}" on this worker (use critic.load)`,
      );
    }
    return critic;
  }

  /**
   * The root of a relay: the command's frames, as this rank received them, to the replica's other
   * ranks (one length, then the bytes: [frame count u32][lengths f64 …][frames …]).
   */
  async relaySend(frames: Uint8Array[]): Promise<void> {
    const group = this.#relayGroup();
    const head = 4 + 8 * frames.length;
    const total = head + frames.reduce((n, f) => n + f.byteLength, 0);
    const packed = new Uint8Array(total);
    const view = new DataView(packed.buffer);
    view.setUint32(0, frames.length, true);
    let at = head;
    frames.forEach((f, i) => {
      view.setFloat64(4 + 8 * i, f.byteLength, true);
      packed.set(f, at);
      at += f.byteLength;
    });
    await group.broadcast({ data: new Float64Array([total]), dtype: "float64", shape: [1] }, 0);
    await group.broadcast({ data: packed, dtype: "uint8", shape: [total] }, 0);
  }

  /** The other end of relaySend: the frames the replica's root received. */
  async relayReceive(): Promise<Uint8Array[]> {
    const group = this.#relayGroup();
    const size = await group.broadcast({ data: new Float64Array(1), dtype: "float64", shape: [1] }, 0);
    const total = (size.data as Float64Array)[0] as number;
    const got = await group.broadcast({ data: new Uint8Array(total), dtype: "uint8", shape: [total] }, 0);
    const packed = got.data as Uint8Array;
    const view = new DataView(packed.buffer, packed.byteOffset, packed.byteLength);
    const count = view.getUint32(0, true);
    const frames: Uint8Array[] = [];
    let at = 4 + 8 * count;
    for (let i = 0; i < count; i++) {
      const length = view.getFloat64(4 + 8 * i, true);
      frames.push(packed.subarray(at, at + length));
      at += length;
    }
    return frames;
  }

  /** The run's mesh, or the one dist.mesh made under `key`. */
  meshFor(key: string | undefined, what: string): Mesh {
    const mesh = key === undefined ? this.mesh : this.namedMeshes.get(key);
    if (!mesh) {
      throw new CommandError(
        "WORKER_ERROR",
        key === undefined
          ? `${what}: no mesh; call dist.mesh first`
          : `${what}: no mesh "${key}"; made: ${[...this.namedMeshes.keys()].join(", ") || "none"} (dist.mesh with key)`,
      );
    }
    return mesh;
  }

  #disposeMeshes(): void {
    this.mesh?.dispose();
    this.mesh = undefined;
    for (const m of this.namedMeshes.values()) m.dispose();
    this.namedMeshes.clear();
  }

  /** Before a new process group: every mesh and group of the old one goes. */
  resetGroups(): void {
    this.replicaGroup?.dispose();
    this.replicaGroup = undefined;
    this.#disposeMeshes();
    this.processGroup?.dispose();
    this.processGroup = undefined;
    this.meshes = 0;
  }

  #relayGroup(): ProcessGroup {
    if (!this.replicaGroup) {
      throw new CommandError(
        "WORKER_ERROR",
        "relay: this rank has no replica group (dist.mesh with several ranks per replica first)",
      );
    }
    return this.replicaGroup;
  }

  dispose(): void {
    for (const model of this.models.values()) model.dispose();
    this.models.clear();
    this.replicaGroup?.dispose();
    this.replicaGroup = undefined;
    this.#disposeMeshes();
    for (const critic of this.critics.values()) critic.dispose();
    this.critics.clear();
    this.processGroup?.dispose();
    this.processGroup = undefined;
  }
}

type Handler<C extends WorkerCommand> = (
  state: WorkerState,
  args: WorkerCommandArgs<C>,
) => Promise<WorkerCommandResults[C]>;

export const commandTable: { [C in WorkerCommand]: Handler<C> } = {
  "worker.info": async (state) => state.info(),

  "worker.freePort": async (state) =>
    new Promise((resolve, reject) => {
      // The OS picks a free port; it is released at once for the c10d store to bind on rank 0.
      const server = createServer();
      server.once("error", reject);
      server.listen(0, state.host, () => {
        const address = server.address();
        server.close(() => resolve({ port: typeof address === "object" && address ? address.port : 0 }));
      });
    }),

  "model.load": async (state, args) => {
    if (state.models.has(args.name)) {
      throw new CommandError(
        "WORKER_ERROR",
        `args.name: a model "${args.name}" is loaded already; free it first`,
      );
    }
    const device = args.device ?? state.device;
    const placement = {
      device,
      dtype: args.dtype ?? "float32",
      freezeVision: args.freezeVision ?? false,
    } as const;
    if (args.mesh !== undefined && !args.sharded)
      throw new CommandError("WORKER_ERROR", "args.mesh: needs args.sharded");
    const mesh = args.sharded ? state.meshFor(args.mesh, "args.sharded") : undefined;
    if (args.sharded && args.dir === undefined)
      throw new CommandError("WORKER_ERROR", "args.sharded: needs args.dir");
    let model: Model;
    if (args.dir !== undefined) {
      model = await Model.load(args.dir, mesh ? { ...placement, mesh } : placement);
    } else if (args.config && args.tensors) model = Model.create(args.config, args.tensors, placement);
    else throw new CommandError("WORKER_ERROR", "args: give either dir, or config with tensors");
    state.models.set(args.name, model);
    const config = args.config ?? readJsonFile(join(args.dir ?? "", "config.json"));
    const vocab =
      (config.text_config as Record<string, unknown> | undefined)?.vocab_size ?? config.vocab_size;
    if (typeof vocab === "number" && Number.isSafeInteger(vocab) && vocab > 0)
      state.vocabSizes.set(args.name, vocab);
    // The whole model's count on every rank (a sharded rank holds a slice): from the folder's
    // tensor headers or the shapes of the tensors sent, without copying a tensor.
    const shapes =
      args.dir !== undefined ? (await inspectCheckpoint(args.dir)).tensors : (args.tensors ?? []);
    const parameters = shapes.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
    return { name: args.name, parameters, device };
  },

  "model.generate": async (state, args) => {
    const { name, prompts, quiet, ...options } = args;
    prompts.forEach((p, i) => {
      checkTokenIds(state, name, p, `args.prompts[${i}]`);
    });
    const model = state.model(name);
    const generations = await model.generate(prompts, options);
    // Read without restarting the allocator's peak (the update's measurement owns it).
    return {
      generations: quiet ? [] : generations,
      kvCacheBytes: model.memory({ resetPeak: false }).kvCache,
    };
  },

  "model.logprobs": async (state, args) => {
    const out = await checkTokenIds(state, args.name, args.tokens, "args.tokens")
      .model(args.name)
      .logprobs(args.tokens, args.cuSeqlens, args.temperature ?? 1, 1024, args.routedExperts, args.images);
    return args.quiet ? { logprobs: new Float32Array(0), entropy: new Float32Array(0) } : out;
  },

  "model.routerStats": async (state, args) => state.model(args.name).routerStats(),

  "model.offload": async (state, args) => {
    const model = state.model(args.name);
    return args.what === "parameters" ? model.offloadParameters() : model.offloadOptimizer();
  },
  "model.onload": async (state, args) => {
    const model = state.model(args.name);
    return args.what === "parameters" ? model.onloadParameters() : model.onloadOptimizer();
  },

  "model.memory": async (state, args) => {
    const now = state.model(args.name).memory();
    const update = state.updateMemory.get(args.name);
    const activations = state.updateActivations.get(args.name);
    return {
      now,
      ...(update ? { update } : {}),
      ...(activations !== undefined ? { updateActivationsPeak: activations } : {}),
    };
  },

  "model.trainStep": async (state, args) =>
    checkTokenIds(state, args.name, args.tokens, "args.tokens")
      .model(args.name)
      .trainStep(args.tokens, args.cuSeqlens, args.lossMask, args.tokenNormaliser, args.temperature ?? 1),

  "model.initOptimizer": async (state, args) => {
    // The engine's checks name each option's field; they run on the worker, behind this schema.
    state.model(args.name).initOptimizer(args.options as unknown as OptimizerOptions);
    return { name: args.name };
  },

  "model.optimizerStep": async (state, args) => state.model(args.name).optimizerStep(),

  "model.policyUpdate": async (state, args) => {
    const model = state.model(args.name);
    args.microBatches.forEach((mb, i) => {
      checkTokenIds(state, args.name, mb.tokens, `args.microBatches[${i}].tokens`);
    });
    const config = checkPolicyLossConfig(args.config as PolicyLossConfig);
    const total = { loss: 0, tokens: 0, metrics: {} as Record<string, number> };
    // Restarts the allocator's peak: the one read after the backward is this update's.
    const before = model.memory();
    const started = performance.now();
    // One call for the whole mini-batch: a pipeline runs the micro-batches 1F1B.
    const { results, schedule } = await model.policySteps(
      args.microBatches.map(({ tokens, cuSeqlens, images, routedExperts, ...perToken }) => ({
        tokens,
        cuSeqlens,
        perToken,
        ...(routedExperts ? { routedExperts } : {}),
        ...(images ? { images } : {}),
      })),
      args.counts,
      config,
      args.temperature ?? 1,
      1024,
    );
    for (const r of results) {
      total.loss += r.loss;
      total.tokens += r.tokens;
      for (const [k, v] of Object.entries(r.metrics)) total.metrics[k] = (total.metrics[k] ?? 0) + v;
    }
    const backwardDone = performance.now();
    const after = model.memory();
    state.updateMemory.set(args.name, after);
    if (after.device && before.device) {
      state.updateActivations.set(
        args.name,
        after.device.peak - before.device.allocated - (after.gradients - before.gradients),
      );
    }
    const step = await model.optimizerStep();
    // On-policy micro-batches (no oldLogprobs): their forward's logprobs are the step's old ones.
    const forward = results.every((r) => r.logprobs && r.entropy)
      ? results.map((r) => ({ logprobs: r.logprobs as Float32Array, entropy: r.entropy as Float32Array }))
      : undefined;
    return {
      ...step,
      loss: total.loss,
      tokens: total.tokens,
      metrics: total.metrics as unknown as PolicyLossMetrics,
      microBatches: args.microBatches.length,
      backwardS: (backwardDone - started) / 1000,
      optimizerS: (performance.now() - backwardDone) / 1000,
      schedule,
      ...(forward && results.length > 0 ? { forward } : {}),
    };
  },

  "model.activations": async (state, args) => {
    if (typeof args.layer !== "string" && typeof args.layer !== "number") {
      throw new CommandError("WORKER_ERROR", "args.layer: expected a layer name or index");
    }
    return checkTokenIds(state, args.name, args.tokens, "args.tokens")
      .model(args.name)
      .activations(args.tokens, args.cuSeqlens, args.layer);
  },

  "model.setTraining": async (state, args) => {
    const { name, ...options } = args;
    state.model(name).setTraining(options);
    return { name };
  },

  "model.saveOptimizer": async (state, args) => {
    await state.model(args.name).saveOptimizer(args.file);
    return { file: args.file };
  },

  "model.loadOptimizer": async (state, args) => {
    await state.model(args.name).loadOptimizer(args.file);
    return { file: args.file };
  },

  "model.save": async (state, args) => {
    await state.model(args.name).save(args.dir, args.maxShardBytes);
    return { dir: args.dir };
  },

  "model.free": async (state, args) => {
    // Freeing a model that was never loaded is a mistake (a typo in the name), not a success.
    state.model(args.name).dispose();
    state.vocabSizes.delete(args.name);
    state.updateMemory.delete(args.name);
    state.updateActivations.delete(args.name);
    return { freed: state.models.delete(args.name) };
  },

  "model.reshard": async (state, args) => {
    const target = state.model(args.name);
    const source = state.model(args.from);
    return target.reshardFrom(source, {
      ...(args.bucketBytes !== undefined ? { bucketBytes: args.bucketBytes } : {}),
      verify: args.verify === true,
    });
  },

  "critic.load": async (state, args) => {
    if (state.critics.has(args.name)) {
      throw new CommandError(
        "WORKER_ERROR",
        `args.name: a critic "${args.name}" is loaded already; free it first`,
      );
    }
    const critic = await Critic.load(args.dir, {
      device: state.device,
      dtype: args.dtype ?? "float32",
      seed: args.seed ?? 0,
    });
    try {
      critic.initOptimizer(args.optimizer as unknown as OptimizerOptions);
    } catch (error) {
      critic.dispose();
      throw error;
    }
    state.critics.set(args.name, critic);
    return { name: args.name };
  },

  "critic.values": async (state, args) => ({
    values: await state.critic(args.name).values(args.tokens, args.cuSeqlens),
  }),

  "critic.update": async (state, args) => {
    const critic = state.critic(args.name);
    const total = { vfLoss: 0, vfClipfrac: 0, vpredMean: 0 };
    for (const mb of args.microBatches) {
      const { tokens, cuSeqlens, ...perToken } = mb;
      const r = await critic.valueStep(
        tokens,
        cuSeqlens,
        perToken,
        args.counts,
        args.config as ValueLossConfig,
      );
      total.vfLoss += r.vfLoss;
      total.vfClipfrac += r.vfClipfrac;
      total.vpredMean += r.vpredMean;
    }
    const step = await critic.optimizerStep();
    return {
      ...total,
      gradNorm: step.gradNorm,
      lr: step.lr,
      skipped: step.skipped,
      microBatches: args.microBatches.length,
    };
  },

  "critic.save": async (state, args) => {
    const critic = state.critic(args.name);
    await critic.save(args.dir);
    await critic.saveOptimizer(args.optimizerFile);
    return { dir: args.dir };
  },

  "critic.loadOptimizer": async (state, args) => {
    await state.critic(args.name).loadOptimizer(args.file);
    return { file: args.file };
  },

  "critic.free": async (state, args) => {
    state.critics.get(args.name)?.dispose();
    return { freed: state.critics.delete(args.name) };
  },

  "dist.init": async (state, args) => {
    state.resetGroups();
    // Rank 0 hosts the c10d store on the port the controller had it pick; the others connect to it.
    state.processGroup = await ProcessGroup.create({
      host: args.storeHost,
      port: args.storePort,
      rank: args.rank,
      worldSize: args.worldSize,
      backend: args.backend,
      ...(args.backend === "nccl" ? { device: state.device } : {}),
    });
    return { rank: args.rank, worldSize: args.worldSize, backend: args.backend };
  },

  "dist.allReduce": async (state, args) => {
    if (!state.processGroup)
      throw new CommandError("WORKER_ERROR", "dist.allReduce: no process group; call dist.init first");
    const dtype = args.values instanceof Float64Array ? "float64" : "float32";
    const reduced = await state.processGroup.allReduce(
      { data: args.values, dtype, shape: [args.values.length] },
      "sum",
    );
    return { values: reduced.data as Float32Array | Float64Array };
  },

  "dist.mesh": async (state, args) => {
    if (!state.processGroup)
      throw new CommandError("WORKER_ERROR", "dist.mesh: no process group; call dist.init first");
    const { key, ...layoutArgs } = args;
    if (key !== undefined) {
      // A second layout over the same ranks (the rollout's): its own groups, named by generation.
      state.namedMeshes.get(key)?.dispose();
      state.namedMeshes.delete(key);
      const mesh = await Mesh.create(state.processGroup, layoutArgs);
      state.namedMeshes.set(key, mesh);
      return { describe: mesh.info.describe, coordinates: mesh.coordinates };
    }
    state.replicaGroup?.dispose();
    state.replicaGroup = undefined;
    state.mesh?.dispose();
    state.mesh = await Mesh.create(state.processGroup, layoutArgs);
    // The replica's own group, for relays: its ranks call this together, right after the mesh.
    const layout = state.mesh.info.layout;
    const d = replicaOf(layout, state.processGroup.rank);
    const replica = replicaRanks(layout, d);
    // Named per mesh: a later mesh's group must not meet this one's keys in the store.
    const name = `relay${state.meshes++}/${d}`;
    if (replica.length > 1) state.replicaGroup = await state.processGroup.subgroup(replica, name);
    return { describe: state.mesh.info.describe, coordinates: state.mesh.coordinates };
  },

  "debug.payload": async (_state, args) => ({
    bytes: args.arrays.reduce((n, a) => n + a.byteLength, 0),
    floats: new Float32Array(args.quiet ? 0 : args.replyFloats),
  }),

  "debug.sleep": async (_state, args) => {
    // Written to stderr so a failure report has a known last line to show.
    process.stderr.write(`debug.sleep: sleeping ${args.ms} ms\n`);
    await sleep(args.ms);
    return { sleptMs: args.ms };
  },
};
