// Process groups on the native engine (addon/dist.cc, parallel/process_group.h): the mechanical
// declarations, then the idiomatic `ProcessGroup` that checks every argument (errors name the
// field) and issues collectives in call order, as c10d needs them matched across ranks.
import { addon, type NativeDtype, type NativeTypedArray } from "./binding.js";
import { checkDevice, checkTensor, type HostTensor } from "./engine.js";

/** An opaque process-group handle; addon/dist.cc tags it and refuses any other object. */
export type NativeProcessGroupHandle = { readonly __tillerProcessGroup: unique symbol };

/** An opaque mesh handle (addon/dist.cc). */
export type NativeMeshHandle = { readonly __tillerMesh: unique symbol };

export type Backend = "gloo" | "nccl";

/**
 * A parallel layout: how many ranks each dimension spans. tensor × context × data × pipeline is
 * the world size; expert folds over tensor × context × data within a pipeline stage. Omitted
 * sizes are 1.
 */
export interface Layout {
  tensor?: number;
  context?: number;
  pipeline?: number;
  expert?: number;
  data?: number;
  /** Norms and residual on token shards between tensor-parallel regions (tensor > 1). */
  sequenceParallel?: boolean;
  /**
   * Pipeline stages: decoder layers of the first and of the last stage (give both or neither);
   * the middle stages share the rest evenly. Neither: an even split of the layers.
   */
  firstStageLayers?: number;
  lastStageLayers?: number;
}

/** A layout with every size given (the stage split stays optional: absent is an even split). */
export type ResolvedLayout = Required<Omit<Layout, "firstStageLayers" | "lastStageLayers">> &
  Pick<Layout, "firstStageLayers" | "lastStageLayers">;

export interface MeshCoordinates {
  tensor: number;
  context: number;
  data: number;
  pipeline: number;
  expert: number;
  expertData: number;
}

export interface MeshInfo {
  rank: number;
  worldSize: number;
  layout: ResolvedLayout;
  coordinates: MeshCoordinates;
  /** "TP2 x DP2" */
  describe: string;
}

/** Per group kind, per collective: calls and payload bytes per rank since the last reset. */
/** Per group kind, per collective: calls, bytes moved and wall seconds (waiting for peers included). */
export type MeshTraffic = Record<string, Record<string, { calls: number; bytes: number; seconds: number }>>;

const layoutSizes = ["tensor", "context", "pipeline", "expert", "data"] as const;
const layoutOptions: readonly string[] = ["sequenceParallel", "firstStageLayers", "lastStageLayers"];

/**
 * The world ranks of data-parallel replica d (one copy of the model: its tensor × context ×
 * pipeline ranks), in Megatron's order: tensor fastest, then context, data, pipeline.
 */
export function replicaRanks(
  layout: { tensor: number; context: number; pipeline: number; data: number },
  d: number,
): number[] {
  const { tensor, context, data, pipeline } = layout;
  const ranks: number[] = [];
  for (let p = 0; p < pipeline; p++)
    for (let c = 0; c < context; c++)
      for (let t = 0; t < tensor; t++) ranks.push(t + tensor * (c + context * (d + data * p)));
  return ranks.sort((a, b) => a - b);
}

/** The data-parallel replica a world rank belongs to. */
export function replicaOf(layout: { tensor: number; context: number; data: number }, rank: number): number {
  return Math.floor(rank / (layout.tensor * layout.context)) % layout.data;
}

/** Checks a layout against a world size; the error names the field and the numbers. */
export function checkLayout(layout: Layout, worldSize: number): ResolvedLayout {
  if (layout === null || typeof layout !== "object") throw new TypeError("layout: expected an object");
  for (const key of Object.keys(layout)) {
    if (!(layoutSizes as readonly string[]).includes(key) && !layoutOptions.includes(key)) {
      throw new TypeError(
        `layout.${key}: unknown; allowed: ${[...layoutSizes, ...layoutOptions].join(", ")}`,
      );
    }
  }
  const stages: Pick<Layout, "firstStageLayers" | "lastStageLayers"> = {};
  for (const key of ["firstStageLayers", "lastStageLayers"] as const) {
    const v = layout[key];
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < 1)
      throw new RangeError(`layout.${key}: ${JSON.stringify(v)} must be an integer ≥ 1`);
    stages[key] = v;
  }
  if ((stages.firstStageLayers === undefined) !== (stages.lastStageLayers === undefined)) {
    throw new RangeError(
      "layout.firstStageLayers: give both firstStageLayers and lastStageLayers, or neither",
    );
  }
  const out = { tensor: 1, context: 1, pipeline: 1, expert: 1, data: 1, sequenceParallel: false };
  for (const key of layoutSizes) {
    const v = layout[key] ?? 1;
    if (!Number.isSafeInteger(v) || v < 1)
      throw new RangeError(`layout.${key}: ${JSON.stringify(v)} must be an integer ≥ 1`);
    out[key] = v;
  }
  out.sequenceParallel = layout.sequenceParallel === true;
  const world = out.tensor * out.context * out.data * out.pipeline;
  if (world !== worldSize) {
    throw new RangeError(
      `layout: tensor ${out.tensor} × context ${out.context} × data ${out.data} × pipeline ${out.pipeline} = ${world} ranks, but the process group has ${worldSize}`,
    );
  }
  const stage = out.tensor * out.context * out.data;
  if (stage % out.expert !== 0) {
    throw new RangeError(`layout.expert: ${out.expert} must divide tensor × context × data = ${stage}`);
  }
  return { ...out, ...stages };
}
export type ReduceOp = "sum" | "avg" | "max" | "min";

export const backends: readonly Backend[] = ["gloo", "nccl"];
export const reduceOps: readonly ReduceOp[] = ["sum", "avg", "max", "min"];

interface NativeTensor {
  data: NativeTypedArray;
  dtype: NativeDtype;
  shape: number[];
}

export interface NativeProcessGroupOptions {
  host: string;
  port: number;
  rank: number;
  worldSize: number;
  backend: Backend;
  timeoutMs: number;
  hostStore?: boolean;
  device?: string;
}

export interface NativeDistAddon {
  /** addon/dist.cc CreateWork: async ProcessGroup::create(options); resolves once all ranks joined */
  processGroupCreate(options: NativeProcessGroupOptions): Promise<NativeProcessGroupHandle>;
  /** addon/dist.cc ProcessGroupDispose(handle) */
  processGroupDispose(handle: NativeProcessGroupHandle): void;
  /** addon/dist.cc TensorWork: async ProcessGroup::all_reduce(tensor, op) on a copy placed on `device` */
  processGroupAllReduce(
    handle: NativeProcessGroupHandle,
    tensor: NativeTensor,
    op: ReduceOp,
    device: string,
  ): Promise<NativeTensor>;
  /** addon/dist.cc TensorWork: async ProcessGroup::broadcast(tensor, root) */
  processGroupBroadcast(
    handle: NativeProcessGroupHandle,
    tensor: NativeTensor,
    root: number,
    device: string,
  ): Promise<NativeTensor>;
  /** addon/dist.cc TensorWork: async ProcessGroup::all_gather_into(out, tensor) */
  processGroupAllGather(
    handle: NativeProcessGroupHandle,
    tensor: NativeTensor,
    device: string,
  ): Promise<NativeTensor>;
  /** addon/dist.cc TensorWork: async ProcessGroup::reduce_scatter(out, tensor, op) */
  processGroupReduceScatter(
    handle: NativeProcessGroupHandle,
    tensor: NativeTensor,
    op: ReduceOp,
    device: string,
  ): Promise<NativeTensor>;
  /** addon/dist.cc TensorWork: async layers::dispatch_combine with identity experts -> [2, tokens, hidden] */
  processGroupExpertDispatch(
    handle: NativeProcessGroupHandle,
    x: NativeTensor,
    experts: NativeTensor,
    weights: NativeTensor,
    numExperts: number,
    upstream: NativeTensor,
    scaleByExpert: boolean,
    device: string,
  ): Promise<NativeTensor>;
  /** addon/dist.cc BarrierWork: async ProcessGroup::barrier() */
  processGroupBarrier(handle: NativeProcessGroupHandle): Promise<void>;
  /** addon/dist.cc SubgroupWork: async ProcessGroup::subgroup(ranks, name), in the parent's call order */
  processGroupSubgroup(
    handle: NativeProcessGroupHandle,
    ranks: number[],
    name: string,
  ): Promise<NativeProcessGroupHandle>;
  /** addon/dist.cc ProcessGroupInfo(handle) */
  processGroupInfo(handle: NativeProcessGroupHandle): {
    rank: number;
    worldSize: number;
    backend: Backend;
    device: string;
  };
  /** addon/dist.cc MeshCreateWork: async parallel::Mesh::create(group, layout), in the group's call order */
  meshCreate(handle: NativeProcessGroupHandle, layout: Layout): Promise<NativeMeshHandle>;
  /** addon/dist.cc MeshInfo(mesh) */
  meshInfo(mesh: NativeMeshHandle): MeshInfo;
  /** addon/dist.cc MeshTraffic(mesh, reset) */
  meshTraffic(mesh: NativeMeshHandle, reset: boolean): MeshTraffic;
  /** addon/dist.cc MeshDispose(mesh) */
  meshDispose(mesh: NativeMeshHandle): void;
  /** addon/dist.cc ProcessGroupBackendAvailable(backend): parallel::backend_available */
  processGroupBackendAvailable(backend: string): boolean;
}

function native(): NativeDistAddon {
  return addon() as unknown as NativeDistAddon;
}

/** Whether this build of the engine can create a group with `backend` (nccl needs a CUDA build). */
export function backendAvailable(backend: Backend): boolean {
  return native().processGroupBackendAvailable(checkBackend(backend));
}

function checkBackend(value: unknown): Backend {
  if (typeof value !== "string" || !backends.includes(value as Backend)) {
    throw new TypeError(
      `backend: ${JSON.stringify(value)} is not a backend; allowed: ${backends.join(", ")}`,
    );
  }
  return value as Backend;
}

function checkInt(value: unknown, field: string, min: number, max: number, range: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${field}: ${JSON.stringify(value)} must be ${range}`);
  }
  return value;
}

function checkOp(value: unknown): ReduceOp {
  if (typeof value !== "string" || !reduceOps.includes(value as ReduceOp)) {
    throw new TypeError(`op: ${JSON.stringify(value)} is not a reduce op; allowed: ${reduceOps.join(", ")}`);
  }
  return value as ReduceOp;
}

const floatDtypes: readonly NativeDtype[] = ["float32", "float64", "float16", "bfloat16"];

export interface ProcessGroupOptions {
  /** Where the rendezvous store listens; default 127.0.0.1 (one machine). */
  host?: string;
  port: number;
  rank: number;
  worldSize: number;
  /** Default gloo (CPU tensors); nccl needs a CUDA build and `device`. */
  backend?: Backend;
  /** Bounds connecting, waiting for the other ranks, and every collective. Default 30 000. */
  timeoutMs?: number;
  /** Whether this rank runs the store. Default: rank 0 does; false everywhere when the controller runs one. */
  hostStore?: boolean;
  /** nccl only: this rank's GPU, "cuda:N". gloo groups work on "cpu". */
  device?: string;
}

/**
 * One rank's membership in a group of `worldSize` processes. Every rank must call the same
 * collectives in the same order; calls on one group run one at a time, in call order, so
 * `Promise.all([pg.allReduce(a), pg.allReduce(b)])` is safe. Call dispose() when done (also `using`).
 */
export class ProcessGroup {
  #handle: NativeProcessGroupHandle | undefined;
  readonly rank: number;
  readonly worldSize: number;
  readonly backend: Backend;
  /** Where collectives run: "cpu" for gloo, the rank's GPU for nccl. */
  readonly device: string;

  private constructor(handle: NativeProcessGroupHandle) {
    this.#handle = handle;
    const info = native().processGroupInfo(handle);
    this.rank = info.rank;
    this.worldSize = info.worldSize;
    this.backend = info.backend;
    this.device = info.device;
  }

  /** Joins the group: resolves once all ranks have joined, rejects after timeoutMs naming who is missing. */
  static async create(options: ProcessGroupOptions): Promise<ProcessGroup> {
    if (options === null || typeof options !== "object") {
      throw new TypeError("options: expected {port, rank, worldSize, ...}");
    }
    const host = options.host ?? "127.0.0.1";
    if (typeof host !== "string" || host === "")
      throw new TypeError(`host: ${JSON.stringify(host)} must be a host name`);
    const port = checkInt(options.port, "port", 1, 65535, "a TCP port (1..65535)");
    const worldSize = checkInt(options.worldSize, "worldSize", 1, 1 << 20, "a positive integer");
    const rank = checkInt(
      options.rank,
      "rank",
      0,
      worldSize - 1,
      `an integer in 0..${worldSize - 1} (worldSize ${worldSize})`,
    );
    const backend = checkBackend(options.backend ?? "gloo");
    const timeoutMs = checkInt(
      options.timeoutMs ?? 30_000,
      "timeoutMs",
      1,
      2 ** 31 - 1,
      "a positive integer",
    );
    if (options.hostStore !== undefined && typeof options.hostStore !== "boolean") {
      throw new TypeError(`hostStore: ${JSON.stringify(options.hostStore)} must be a boolean`);
    }
    let device = "cpu";
    if (backend === "nccl") {
      device = checkDevice(options.device, "device");
      if (!/^cuda:\d+$/.test(device))
        throw new TypeError(`device: nccl needs "cuda:N", got ${JSON.stringify(device)}`);
    } else if (options.device !== undefined && options.device !== "cpu") {
      throw new TypeError(`device: gloo groups work on "cpu", got ${JSON.stringify(options.device)}`);
    }
    if (!native().processGroupBackendAvailable(backend)) {
      throw new Error(`backend: ${backend} is not available in this build (built without CUDA); use gloo`);
    }
    const handle = await native().processGroupCreate({
      host,
      port,
      rank,
      worldSize,
      backend,
      timeoutMs,
      hostStore: options.hostStore ?? rank === 0,
      device,
    });
    return new ProcessGroup(handle);
  }

  #live(): NativeProcessGroupHandle {
    if (!this.#handle) throw new Error("group: this process group was disposed");
    return this.#handle;
  }

  /** @internal the addon's handle, for Mesh.create */
  get nativeHandle(): NativeProcessGroupHandle {
    return this.#live();
  }

  #tensor(tensor: HostTensor, op?: ReduceOp): NativeTensor {
    const t = checkTensor(tensor, "tensor");
    if (op === "avg" && !floatDtypes.includes(t.dtype)) {
      throw new TypeError(`op: avg needs a floating dtype, tensor.dtype is ${t.dtype}`);
    }
    return { data: t.data, dtype: t.dtype, shape: t.shape };
  }

  /** Every rank gets op over all ranks' `tensor` (same shape and dtype everywhere). The input is not changed. */
  allReduce(tensor: HostTensor, op: ReduceOp = "sum"): Promise<HostTensor> {
    const o = checkOp(op);
    return native().processGroupAllReduce(this.#live(), this.#tensor(tensor, o), o, this.device);
  }

  /** Every rank gets rank `root`'s tensor; the others pass a tensor of the same shape and dtype. */
  broadcast(tensor: HostTensor, root: number): Promise<HostTensor> {
    checkInt(root, "root", 0, this.worldSize - 1, `a rank in 0..${this.worldSize - 1}`);
    return native().processGroupBroadcast(this.#live(), this.#tensor(tensor), root, this.device);
  }

  /** tensor: [n, ...] on every rank → [worldSize * n, ...], rank r's rows at [r*n, (r+1)*n). */
  allGather(tensor: HostTensor): Promise<HostTensor> {
    const t = this.#tensor(tensor);
    if (t.shape.length === 0) throw new RangeError("tensor.shape: allGather needs at least one dimension");
    return native().processGroupAllGather(this.#live(), t, this.device);
  }

  /** tensor: [worldSize * n, ...] on every rank → [n, ...]: rank r gets op over ranks of rows [r*n, (r+1)*n). */
  reduceScatter(tensor: HostTensor, op: ReduceOp = "sum"): Promise<HostTensor> {
    const o = checkOp(op);
    const t = this.#tensor(tensor, o);
    const rows = t.shape[0];
    if (rows === undefined || rows % this.worldSize !== 0) {
      throw new RangeError(
        `tensor.shape: [${t.shape.join(", ")}] needs a first dimension divisible by worldSize ${this.worldSize}`,
      );
    }
    return native().processGroupReduceScatter(this.#live(), t, o, this.device);
  }

  /**
   * The MoE token dispatcher alone, for its test (every rank calls it): each (token, k) pair of `x`
   * ([tokens, hidden] float) goes to expert `experts[token, k]` ([tokens, topK] int32; numExperts
   * spread evenly over the ranks) by all-to-all, through an identity expert, back by the inverse
   * path, and is summed per token weighted by `weights` ([tokens, topK] float32). Resolves to the
   * output and the gradient of sum(output · upstream) with respect to x. scaleByExpert: the experts
   * multiply their rows by 1 + their global id instead (a row sent to the wrong expert shows).
   */
  async expertDispatch(
    x: HostTensor,
    experts: HostTensor,
    weights: HostTensor,
    numExperts: number,
    upstream: HostTensor,
    scaleByExpert = false,
  ): Promise<{ output: HostTensor; grad: HostTensor }> {
    checkInt(numExperts, "numExperts", 1, Number.MAX_SAFE_INTEGER, "a positive integer");
    const both = await native().processGroupExpertDispatch(
      this.#live(),
      this.#tensor(x),
      this.#tensor(experts),
      this.#tensor(weights),
      numExperts,
      this.#tensor(upstream),
      scaleByExpert,
      this.device,
    );
    const [tokens = 0, hidden = 0] = x.shape;
    const n = tokens * hidden;
    const data = both.data as Float32Array;
    return {
      output: { data: data.slice(0, n), dtype: both.dtype, shape: [tokens, hidden] },
      grad: { data: data.slice(n, 2 * n), dtype: both.dtype, shape: [tokens, hidden] },
    };
  }

  /** Resolves once every rank has reached its barrier(). */
  barrier(): Promise<void> {
    return native().processGroupBarrier(this.#live());
  }

  /**
   * A group of some of this group's ranks (ascending); only they call it, in the same order as
   * their other calls on this group. Its ranks are renumbered 0.. in that order.
   */
  async subgroup(ranks: number[], name: string): Promise<ProcessGroup> {
    if (!Array.isArray(ranks) || !ranks.includes(this.rank)) {
      throw new RangeError(
        `ranks: [${ranks}] must be ranks of this group that include this rank (${this.rank})`,
      );
    }
    return new ProcessGroup(await native().processGroupSubgroup(this.#live(), ranks, name));
  }

  /** Leaves the group (after any running collective). The rank hosting the store should leave last. */
  dispose(): void {
    if (!this.#handle) return;
    native().processGroupDispose(this.#handle);
    this.#handle = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * The process mesh of a run (parallel/mesh.h): the c10d groups of every layout dimension over the
 * ranks of a process group, made once. Every rank creates it with the same layout. A model loaded
 * with `{ mesh }` holds this rank's slices and runs its collectives on these groups.
 */
export class Mesh {
  #handle: NativeMeshHandle | undefined;
  readonly info: MeshInfo;

  private constructor(handle: NativeMeshHandle) {
    this.#handle = handle;
    this.info = native().meshInfo(handle);
  }

  static async create(group: ProcessGroup, layout: Layout): Promise<Mesh> {
    checkLayout(layout, group.worldSize);
    return new Mesh(await native().meshCreate(group.nativeHandle, layout));
  }

  /** @internal the addon's handle, for Model.load */
  get nativeHandle(): NativeMeshHandle {
    if (!this.#handle) throw new Error("mesh: this mesh was disposed");
    return this.#handle;
  }

  get coordinates(): MeshCoordinates {
    return this.info.coordinates;
  }

  /** What each group's collectives moved since the last reset (reset: start counting again). */
  traffic(reset = false): MeshTraffic {
    return native().meshTraffic(this.nativeHandle, reset);
  }

  /** The groups close once no model holds them. */
  dispose(): void {
    if (!this.#handle) return;
    native().meshDispose(this.#handle);
    this.#handle = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
