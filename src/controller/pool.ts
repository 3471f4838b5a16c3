// The worker pool: the worker ROUTER socket, local worker processes, ranks, heartbeats, and the
// failure reports (rank, the commands it was running, its stderr tail) when a worker is lost.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import * as zmq from "zeromq";
import type { MemoryBytes } from "../native/model.js";
import { decode, liftBodies, totalBytes } from "../protocol/frames.js";
import { applyServerKeys, type CurveClientKeys, type KeyPair } from "../protocol/keys.js";
import {
  type ControllerToWorker,
  type ErrorBody,
  type EventMap,
  type EventTopic,
  type WorkerCommand,
  type WorkerCommandResults,
  type WorkerFailure,
  type WorkerJoin,
  type WorkerSummary,
  workerToController,
} from "../protocol/messages.js";
import { SendQueue } from "../protocol/socket.js";

/** Workers this controller starts itself: CPU workers, or one per listed GPU. */
export type LocalWorkers =
  | { kind: "cpu"; count: number }
  | { kind: "gpu"; gpus: string[] }
  | { kind: "none" };

export interface PoolOptions {
  /** How many ranks the job has; joins beyond it are refused. */
  worldSize: number;
  local: LocalWorkers;
  /** The controller address spawned workers are given. */
  controllerAddress: string;
  heartbeatMs: number;
  /** A worker silent this long is lost. */
  heartbeatTimeoutMs: number;
  /** A worker exits when the controller is silent this long. */
  controllerTimeoutMs: number;
  /** The server pair when CURVE is on; spawned workers then get their own allowed pair. */
  serverKeys?: KeyPair;
  localWorkerKeys?: KeyPair;
  publish: <T extends EventTopic>(topic: T, data: EventMap[T]) => void;
}

/** An error from a worker, as the client will see it. */
export class WorkerCallError extends Error {
  constructor(readonly body: ErrorBody) {
    super(body.message);
  }
}

interface WorkerRecord {
  rank: number;
  routingId: Buffer;
  join: WorkerJoin;
  local: boolean;
  lastSeen: number;
  stderrTail: string;
  running: Map<number, WorkerCommand>;
  models: Set<string>;
  /** Its place in the run's mesh, from its last dist.mesh (cleared by dist.init). */
  mesh?: WorkerSummary["mesh"];
  /** The same in the rollout's layout (dist.mesh with key "rollout"). */
  rolloutMesh?: WorkerSummary["rolloutMesh"];
  /** Each loaded model's bytes as its last model.memory read them. */
  memory: Map<string, { bytes: MemoryBytes; at: string }>;
  joinedAt: string;
}

interface Pending {
  record: WorkerRecord;
  command: WorkerCommand;
  args: unknown;
  resolve: (result: unknown) => void;
  reject: (error: WorkerCallError) => void;
  timer?: NodeJS.Timeout;
}

interface LocalChild {
  rank: number;
  process: ChildProcess;
  stderrTail: string;
}

const tailBytes = 4096;

/** Replica arguments smaller than this are not relayed ($TILLER_RELAY_MIN_BYTES, default 1 MiB). */
function relayMinBytes(): number {
  const v = Number(process.env.TILLER_RELAY_MIN_BYTES ?? 1 << 20);
  return Number.isFinite(v) && v >= 0 ? v : 1 << 20;
}

/**
 * Whether a run relays a replica's data through its first rank. $TILLER_RELAY: "on", "off", or
 * "auto" (default): on when some worker joined from elsewhere — relaying saves the controller's
 * network bytes; workers this controller spawned share its host, where a relay only adds copies.
 */
export function relayWanted(pool: WorkerPool): boolean {
  const mode = process.env.TILLER_RELAY ?? "auto";
  if (mode === "on") return true;
  if (mode === "off") return false;
  const local = new Set(pool.localRanks);
  return pool.ranks().some((r) => !local.has(r));
}
const cliPath = fileURLToPath(new URL("../cli/main.js", import.meta.url));

export class WorkerPool {
  readonly #socket = new zmq.Router({ linger: 0 });
  readonly #out = new SendQueue(this.#socket);
  readonly #byRank = new Map<number, WorkerRecord>();
  readonly #byRoutingId = new Map<string, WorkerRecord>();
  readonly #children = new Map<number, LocalChild>();
  readonly #pending = new Map<number, Pending>();
  readonly failures: WorkerFailure[] = [];
  #nextId = 1;
  #timer: NodeJS.Timeout | undefined;
  #stopping = false;
  /** Called when a worker is lost, after its pending calls were failed. */
  onLost: (failure: WorkerFailure) => void = () => {};

  constructor(readonly options: PoolOptions) {
    if (options.serverKeys) applyServerKeys(this.#socket, options.serverKeys, "workers");
  }

  async start(endpoint: string): Promise<void> {
    await this.#socket.bind(endpoint);
    void this.#serve();
    this.#timer = setInterval(() => this.#tick(), this.options.heartbeatMs);
    const { local } = this.options;
    const ranks = local.kind === "cpu" ? local.count : local.kind === "gpu" ? local.gpus.length : 0;
    for (let rank = 0; rank < ranks; rank++) this.spawnLocal(rank);
  }

  get localRanks(): number[] {
    const { local } = this.options;
    const n = local.kind === "cpu" ? local.count : local.kind === "gpu" ? local.gpus.length : 0;
    return Array.from({ length: n }, (_, i) => i);
  }

  ranks(): number[] {
    return [...this.#byRank.keys()].sort((a, b) => a - b);
  }

  host(rank: number): string | undefined {
    return this.#byRank.get(rank)?.join.host;
  }

  /** Starts a worker process for a local rank, stdin piped so it dies with this controller. */
  spawnLocal(rank: number): void {
    if (this.#children.has(rank) || this.#byRank.has(rank)) return;
    const { local } = this.options;
    const env: NodeJS.ProcessEnv = { ...process.env };
    if (local.kind === "gpu") env.CUDA_VISIBLE_DEVICES = local.gpus[rank];
    else if (local.kind === "cpu") env.CUDA_VISIBLE_DEVICES = "";
    if (this.options.serverKeys && this.options.localWorkerKeys) {
      env.TILLER_WORKER_CURVE = JSON.stringify({
        ...this.options.localWorkerKeys,
        serverPublicKey: this.options.serverKeys.publicKey,
      } satisfies CurveClientKeys);
    }
    const child = spawn(
      process.execPath,
      [
        cliPath,
        "worker",
        "--controller",
        this.options.controllerAddress,
        "--rank",
        String(rank),
        "--exit-with-stdin",
      ],
      { env, stdio: ["pipe", "pipe", "pipe"] },
    );
    const entry: LocalChild = { rank, process: child, stderrTail: "" };
    this.#children.set(rank, entry);
    const forward = (stream: "stdout" | "stderr") => (chunk: Buffer) => {
      const text = chunk.toString("utf8");
      if (stream === "stderr") entry.stderrTail = (entry.stderrTail + text).slice(-tailBytes);
      process.stderr.write(text.replace(/^(?=.)/gm, `[rank ${rank}] `));
      this.options.publish("log", { rank, stream, text });
    };
    child.stdout?.on("data", forward("stdout"));
    child.stderr?.on("data", forward("stderr"));
    child.stdin?.on("error", () => {});
    child.once("exit", (code, signal) => {
      this.#children.delete(rank);
      if (this.#stopping) return;
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      const record = this.#byRank.get(rank);
      if (record && record.join.pid === child.pid) {
        record.stderrTail = entry.stderrTail || record.stderrTail;
        this.#lose(record, `worker process ${how}`);
      } else {
        this.#report({
          rank,
          pid: child.pid ?? 0,
          reason: `worker process ${how} before joining`,
          commands: [],
          stderrTail: entry.stderrTail,
          at: new Date().toISOString(),
        });
      }
    });
  }

  summaries(): WorkerSummary[] {
    return this.ranks().map((rank) => {
      const r = this.#byRank.get(rank) as WorkerRecord;
      return {
        rank,
        pid: r.join.pid,
        hostname: r.join.hostname,
        device: r.join.device,
        memory: r.join.memory,
        local: r.local,
        state: r.running.size > 0 ? "busy" : "ready",
        running: [...r.running.values()],
        models: [...r.models],
        ...(r.mesh ? { mesh: r.mesh } : {}),
        ...(r.rolloutMesh ? { rolloutMesh: r.rolloutMesh } : {}),
        ...(r.memory.size > 0 ? { modelMemory: Object.fromEntries(r.memory) } : {}),
        joinedAt: r.joinedAt,
      };
    });
  }

  /** Commands sent and their bytes (headers and bodies), replies received and theirs. */
  readonly traffic = {
    commands: 0,
    commandBytes: 0,
    commandBodyBytes: 0,
    replies: 0,
    replyBytes: 0,
    replyBodyBytes: 0,
  };

  /** Runs one command on one rank; rejects with a WorkerCallError naming the rank and command. */
  call(rank: number, command: WorkerCommand, args: unknown, timeoutMs?: number): Promise<unknown> {
    return this.#call(rank, command, args, liftBodies(args), timeoutMs);
  }

  /**
   * The same command to several ranks (the ranks of one model replica): the arguments' bodies are
   * lifted out once, so nothing is serialised twice. `quiet` ranks also get `quiet: true`. With
   * `relay`, the data goes out once: ranks[0] gets the frames and broadcasts them over the replica's
   * group (the workers' dist.mesh made it), the others get a header only. One promise per rank.
   */
  callEach(
    ranks: number[],
    command: WorkerCommand,
    args: unknown,
    options: { timeoutMs?: number; quiet?: ReadonlySet<number>; relay?: boolean } = {},
  ): Promise<unknown>[] {
    const { timeoutMs, quiet } = options;
    const lifted = liftBodies(args);
    // Small arguments go straight to every rank: a relay adds two collectives of latency.
    const relay = options.relay === true && totalBytes(lifted.frames) >= relayMinBytes();
    const quietJson = (json: unknown) => ({ ...(json as object), quiet: true });
    return ranks.map((rank, i) => {
      if (relay && ranks.length > 1) {
        if (i === 0) {
          const json = quiet?.has(rank) ? quietJson(lifted.json) : lifted.json;
          return this.#call(rank, command, args, { ...lifted, json }, timeoutMs, "send");
        }
        const empty = { json: quiet?.has(rank) ? { quiet: true } : {}, kinds: [], frames: [] };
        return this.#call(rank, command, args, empty, timeoutMs, "receive");
      }
      return this.#call(
        rank,
        command,
        args,
        quiet?.has(rank) ? { ...lifted, json: quietJson(lifted.json) } : lifted,
        timeoutMs,
      );
    });
  }

  #call(
    rank: number,
    command: WorkerCommand,
    args: unknown,
    lifted: ReturnType<typeof liftBodies>,
    timeoutMs: number | undefined,
    relay?: "send" | "receive",
  ): Promise<unknown> {
    const record = this.#byRank.get(rank);
    if (!record) {
      return Promise.reject(
        new WorkerCallError({ code: "NO_WORKERS", message: `no worker holds rank ${rank}`, rank, command }),
      );
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const pending: Pending = { record, command, args, resolve, reject };
      if (timeoutMs !== undefined) {
        pending.timer = setTimeout(() => {
          this.#settle(id, {
            code: "WORKER_ERROR",
            message: `rank ${rank} did not answer ${command} within ${timeoutMs} ms`,
            rank,
            command,
          });
        }, timeoutMs);
      }
      this.#pending.set(id, pending);
      record.running.set(id, command);
      const { json, kinds, frames } = lifted;
      const message: ControllerToWorker = {
        type: "command",
        id,
        command,
        args: json,
        ...(relay ? { relay } : {}),
      };
      const header = kinds.length > 0 ? { ...message, bodies: kinds } : message;
      const out = [Buffer.from(JSON.stringify(header)), ...frames];
      this.traffic.commands++;
      this.traffic.commandBytes += totalBytes(out);
      this.traffic.commandBodyBytes += totalBytes(frames);
      void this.#out.send([record.routingId, ...out]);
    });
  }

  #settle(id: number, error: ErrorBody | undefined, result?: unknown): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    pending.record.running.delete(id);
    if (error) {
      pending.reject(new WorkerCallError({ ...error, rank: pending.record.rank, command: pending.command }));
      return;
    }
    // Track what each rank holds, so a reattaching client sees it.
    const name = (pending.args as { name?: unknown } | undefined)?.name;
    if (pending.command === "model.load" && typeof name === "string") pending.record.models.add(name);
    if (pending.command === "model.free" && typeof name === "string") {
      pending.record.models.delete(name);
      pending.record.memory.delete(name);
    }
    if (pending.command === "model.memory" && typeof name === "string") {
      const bytes = (result as WorkerCommandResults["model.memory"]).now;
      pending.record.memory.set(name, { bytes, at: new Date().toISOString() });
    }
    if (pending.command === "dist.init") {
      pending.record.mesh = undefined;
      pending.record.rolloutMesh = undefined;
    }
    if (pending.command === "dist.mesh") {
      const mesh = result as WorkerSummary["mesh"];
      const key = (pending.args as { key?: string }).key;
      if (key === undefined) pending.record.mesh = mesh;
      else if (key === "rollout") pending.record.rolloutMesh = mesh;
    }
    pending.resolve(result);
  }

  async #serve(): Promise<void> {
    try {
      for await (const [routingId, ...frames] of this.#socket) {
        if (routingId) this.#receive(routingId, frames);
      }
    } catch (error) {
      if (!this.#stopping)
        process.stderr.write(`tiller controller: worker socket failed: ${(error as Error).message}\n`);
    }
  }

  #receive(routingId: Buffer, frames: Buffer[]): void {
    const key = routingId.toString("hex");
    let header: Record<string, unknown>;
    let payload: unknown;
    try {
      ({ header, payload } = decode(frames, "result"));
      if (header.type === "reply") {
        this.traffic.replies++;
        this.traffic.replyBytes += totalBytes(frames);
        this.traffic.replyBodyBytes += totalBytes(frames.slice(1));
      }
    } catch {
      return; // not a worker message; a worker never sends these, so there is nobody to tell
    }
    const record = this.#byRoutingId.get(key);
    if (header.type === "join") {
      this.#join(routingId, header);
      return;
    }
    if (!record) {
      // A worker this pool declared lost (or never knew) is still talking: tell it to leave, so
      // a stalled process that wakes up does not hold a rank twice.
      this.#send(routingId, { type: "refuse", reason: "unknown or lost worker; start it again to rejoin" });
      return;
    }
    record.lastSeen = Date.now();
    try {
      if (header.type === "heartbeat") {
        const beat = workerToController.heartbeat(header, "heartbeat");
        if (beat.stderrTail !== undefined && !record.local) record.stderrTail = beat.stderrTail;
      } else if (header.type === "reply") {
        const reply = workerToController.reply(header, "reply");
        this.#settle(reply.id, reply.ok ? undefined : (reply.error as ErrorBody), payload);
      } else if (header.type === "event") {
        const event = workerToController.event(header, "event");
        this.options.publish(
          event.topic as EventTopic,
          { rank: record.rank, ...(event.data as object) } as never,
        );
      }
    } catch (error) {
      process.stderr.write(
        `tiller controller: rank ${record.rank} sent a bad message: ${(error as Error).message}\n`,
      );
    }
  }

  #join(routingId: Buffer, header: Record<string, unknown>): void {
    let join: WorkerJoin;
    try {
      join = workerToController.join(header, "join");
    } catch (error) {
      this.#send(routingId, { type: "refuse", reason: (error as Error).message });
      return;
    }
    const { worldSize } = this.options;
    const free = (r: number) => r < worldSize && !this.#byRank.has(r);
    let rank = join.rank !== undefined && free(join.rank) ? join.rank : undefined;
    if (join.rank !== undefined && rank === undefined) {
      this.#send(routingId, {
        type: "refuse",
        reason: `rank ${join.rank} is taken or outside world size ${worldSize}`,
      });
      return;
    }
    for (let r = 0; rank === undefined && r < worldSize; r++) if (free(r)) rank = r;
    if (rank === undefined) {
      this.#send(routingId, { type: "refuse", reason: `all ${worldSize} ranks are taken` });
      return;
    }
    const child = this.#children.get(rank);
    const record: WorkerRecord = {
      rank,
      routingId,
      join,
      local: child?.process.pid === join.pid,
      lastSeen: Date.now(),
      stderrTail: "",
      running: new Map(),
      models: new Set(),
      memory: new Map(),
      joinedAt: new Date().toISOString(),
    };
    this.#byRank.set(rank, record);
    this.#byRoutingId.set(routingId.toString("hex"), record);
    this.#send(routingId, {
      type: "welcome",
      rank,
      worldSize,
      heartbeatMs: this.options.heartbeatMs,
      controllerTimeoutMs: this.options.controllerTimeoutMs,
    });
    const summary = this.summaries().find((s) => s.rank === rank);
    if (summary) this.options.publish("worker.joined", summary);
  }

  #send(routingId: Buffer, message: ControllerToWorker): void {
    void this.#out.send([routingId, JSON.stringify(message)]);
  }

  #tick(): void {
    const now = Date.now();
    for (const record of [...this.#byRank.values()]) {
      if (now - record.lastSeen > this.options.heartbeatTimeoutMs) {
        this.#lose(record, `stopped heartbeating (silent for ${now - record.lastSeen} ms)`);
        // A local process that stalls is ended, so it cannot come back as an orphan.
        this.#children.get(record.rank)?.process.kill("SIGKILL");
      } else this.#send(record.routingId, { type: "heartbeat" });
    }
  }

  #lose(record: WorkerRecord, reason: string): void {
    if (this.#byRank.get(record.rank) !== record) return;
    this.#byRank.delete(record.rank);
    this.#byRoutingId.delete(record.routingId.toString("hex"));
    const commands = [...record.running.values()];
    const stderrTail = this.#children.get(record.rank)?.stderrTail || record.stderrTail;
    const failure: WorkerFailure = {
      rank: record.rank,
      pid: record.join.pid,
      reason,
      commands,
      stderrTail,
      at: new Date().toISOString(),
    };
    for (const id of [...record.running.keys()]) {
      this.#settle(id, {
        code: "WORKER_LOST",
        message: `rank ${record.rank} (pid ${record.join.pid}) ${reason} while running ${this.#pending.get(id)?.command}`,
        stderrTail,
      });
    }
    this.#report(failure);
  }

  #report(failure: WorkerFailure): void {
    this.failures.push(failure);
    if (this.failures.length > 100) this.failures.shift();
    this.options.publish("worker.lost", failure);
    this.onLost(failure);
  }

  /** Tells every worker to exit, then ends local processes that do not within graceMs. */
  async shutdown(graceMs = 3000): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#timer);
    for (const record of this.#byRank.values()) this.#send(record.routingId, { type: "exit" });
    for (const id of [...this.#pending.keys()]) {
      this.#settle(id, { code: "SHUTTING_DOWN", message: "the controller is shutting down" });
    }
    const exits = [...this.#children.values()].map(
      ({ process: child }) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once("exit", () => resolve());
          const kill = setTimeout(() => child.kill("SIGKILL"), graceMs);
          child.once("exit", () => clearTimeout(kill));
          child.kill("SIGTERM");
        }),
    );
    await Promise.all(exits);
    await Promise.race([this.#out.drain(), new Promise((r) => setTimeout(r, 200))]);
    this.#socket.close();
  }
}
