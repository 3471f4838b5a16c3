// The controller process: a ROUTER for clients (many requests in flight, each answered exactly
// once, malformed ones included), the worker pool's ROUTER, and a PUB for events. Binding beyond
// loopback requires CURVE keys and an allow-list (enforced by the ZAP handler).
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import * as zmq from "zeromq";
import { ArrowGuard } from "../protocol/arrow-guard.js";
import { endpointsOf, isLocalOnly } from "../protocol/endpoints.js";
import { encode, FrameError, parseHeader, placeBodiesGuarded, totalBytes } from "../protocol/frames.js";
import { applyServerKeys, type CurveServerKeys, makeKeyPair, ZapHandler } from "../protocol/keys.js";
import {
  type ClientMethod,
  type ControllerState,
  clientMethodArgs,
  type ErrorBody,
  type EventMap,
  type EventTopic,
  type ReplyHeader,
  requestHeader,
} from "../protocol/messages.js";
import { ValidationError } from "../protocol/schema.js";
import { SendQueue } from "../protocol/socket.js";
import { ConfigError } from "../rl/config.js";
import { UserError } from "../util/errors.js";
import { Access, AccessError } from "./access.js";
import type { ExperimentRun } from "./experiment.js";
import { type ControllerContext, handlers } from "./handlers.js";
import { type LocalWorkers, WorkerCallError, WorkerPool } from "./pool.js";

export interface ControllerOptions {
  /** The client address: tcp://HOST:PORT or ipc:///PATH; workers and events sit beside it. */
  bind: string;
  local: LocalWorkers;
  /** Ranks in the job (default: the local workers, else 1). */
  worldSize?: number;
  curve?: CurveServerKeys;
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  controllerTimeoutMs?: number;
  /** Requests larger than this get TOO_LARGE; ZeroMQ drops peers sending 4× more in one frame. */
  maxMessageBytes?: number;
  /** Where to record {address, pid} for `connect()` to find this controller. */
  stateFile?: string;
  /** Folders remote (CURVE) clients may name paths under (default: the working directory). */
  roots?: string[];
  /** Folders remote clients may load reward modules from (default: only tiller's own). */
  rewardRoots?: string[];
  /** A folder this controller made for its sockets and record: kept 0700 whatever the umask. */
  privateDir?: string;
}

export interface ControllerRecord {
  address: string;
  pid: number;
  startedAt: string;
}

export function readControllerRecord(file: string): ControllerRecord | undefined {
  try {
    const r = JSON.parse(readFileSync(file, "utf8")) as ControllerRecord;
    return typeof r.address === "string" && Number.isInteger(r.pid) ? r : undefined;
  } catch {
    return undefined;
  }
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Errors a user can act on carry their own code; only what is unforeseen is INTERNAL. */
export function errorBody(error: unknown): ErrorBody {
  if (error instanceof WorkerCallError) return error.body;
  if (error instanceof AccessError) return { code: "FORBIDDEN", message: error.message, field: error.field };
  if (error instanceof UserError) {
    return { code: error.code, message: error.message, ...(error.field ? { field: error.field } : {}) };
  }
  if (error instanceof ValidationError)
    return { code: "BAD_ARGS", message: error.message, field: error.field };
  if (error instanceof FrameError) return { code: "BAD_FRAME", message: error.message };
  if (error instanceof ConfigError)
    return { code: "BAD_ARGS", message: error.message, field: `config.${error.field}` };
  const e = error as NodeJS.ErrnoException;
  if (e?.code === "ENOENT" || e?.code === "ENOTDIR") return { code: "NOT_FOUND", message: e.message };
  if (e?.code === "EACCES" || e?.code === "EPERM") return { code: "FORBIDDEN", message: e.message };
  return { code: "INTERNAL", message: e?.message ?? String(error), ...(e?.stack ? { stack: e.stack } : {}) };
}

export class Controller implements ControllerContext {
  readonly pool: WorkerPool;
  readonly startedAt = new Date().toISOString();
  processGroup: ControllerState["processGroup"] = null;
  readonly experiments = new Map<string, ExperimentRun>();
  readonly access: Access;
  /** What a user should know about how this controller is reachable (printed at start). */
  readonly warnings: string[] = [];
  readonly #guard = new ArrowGuard();
  readonly #clients = new zmq.Router({ linger: 0 });
  readonly #events = new zmq.Publisher({ linger: 0 });
  readonly #clientOut = new SendQueue(this.#clients);
  readonly #eventOut = new SendQueue(this.#events);
  readonly #maxMessageBytes: number;
  #zap: ZapHandler | undefined;
  #stopping: Promise<void> | undefined;
  #resolveStopped!: () => void;
  /** Resolves once the controller has shut down. */
  readonly stopped = new Promise<void>((resolve) => {
    this.#resolveStopped = resolve;
  });

  private constructor(readonly options: ControllerOptions) {
    const { local } = options;
    const localCount = local.kind === "cpu" ? local.count : local.kind === "gpu" ? local.gpus.length : 0;
    this.#maxMessageBytes = options.maxMessageBytes ?? 512 * 2 ** 20;
    this.access = new Access({
      confined: options.curve !== undefined,
      roots: options.roots ?? [process.cwd()],
      rewardRoots: options.rewardRoots ?? [],
    });
    const zmqLimit = Math.min(this.#maxMessageBytes * 4 + 2 ** 20, Number.MAX_SAFE_INTEGER);
    this.#clients.maxMessageSize = zmqLimit;
    this.pool = new WorkerPool({
      worldSize: options.worldSize ?? Math.max(localCount, 1),
      local,
      controllerAddress: options.bind,
      heartbeatMs: options.heartbeatMs ?? 500,
      heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? 5000,
      controllerTimeoutMs: options.controllerTimeoutMs ?? 5000,
      ...(options.curve ? { serverKeys: options.curve, localWorkerKeys: makeKeyPair() } : {}),
      publish: (topic, data) => this.publish(topic, data),
    });
    this.pool.onLost = () => {
      // A process group with a missing rank is broken; the client re-initialises after respawn.
      this.processGroup = null;
    };
  }

  static async start(options: ControllerOptions): Promise<Controller> {
    if (!isLocalOnly(options.bind) && !options.curve) {
      throw new Error(
        `binding ${options.bind} exposes the controller beyond this machine; give it CURVE keys ` +
          "(--key SERVER.key --allow CLIENTS) made with `tiller keys`, or bind a loopback or ipc:// address",
      );
    }
    const controller = new Controller(options);
    await controller.#start();
    return controller;
  }

  async #start(): Promise<void> {
    const endpoints = endpointsOf(this.options.bind);
    const { privateDir } = this.options;
    if (privateDir) {
      mkdirSync(privateDir, { recursive: true, mode: 0o700 });
      chmodSync(privateDir, 0o700); // mkdir's mode is cut by the umask; chmod's is not
    }
    const socketFiles = Object.values(endpoints)
      .filter((e) => e.startsWith("ipc://") && !e.startsWith("ipc://@"))
      .map((e) => e.slice("ipc://".length));
    for (const file of socketFiles) mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    this.#warnAboutReach();
    const curve = this.options.curve;
    if (curve) {
      this.#zap = await ZapHandler.start({
        clients: [...curve.allowedPublicKeys],
        workers: [...(curve.allowedWorkerKeys ?? [])],
      });
      applyServerKeys(this.#clients, curve, "clients");
      applyServerKeys(this.#events, curve, "clients");
      if (this.pool.options.localWorkerKeys)
        this.#zap.allow("workers", this.pool.options.localWorkerKeys.publicKey);
    }
    await this.#clients.bind(endpoints.clients);
    await this.#events.bind(endpoints.events);
    await this.pool.start(endpoints.workers);
    // ZeroMQ makes socket files with the umask's mode; only this user may connect to them.
    for (const file of socketFiles) chmodSync(file, 0o600);
    void this.#serve();
    if (this.options.stateFile) this.#writeRecord(this.options.stateFile);
  }

  /** Addresses that any local user can reach without a key are named at start. */
  #warnAboutReach(): void {
    const bind = this.options.bind;
    if (this.options.curve) return;
    if (bind.startsWith("ipc://@")) {
      this.warnings.push(
        `${bind} is an abstract socket: file permissions do not apply, so any user of this machine can ` +
          "connect and drive the controller with your rights; bind an ipc:// path (the default) instead",
      );
    } else if (bind.startsWith("tcp://")) {
      this.warnings.push(
        `${bind} takes clients without keys: any user of this machine can connect and drive the ` +
          "controller with your rights; bind the default ipc:// path, or give --key and --allow",
      );
    }
  }

  #writeRecord(file: string): void {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const record: ControllerRecord = {
      address: this.options.bind,
      pid: process.pid,
      startedAt: this.startedAt,
    };
    writeFileSync(`${file}.tmp`, JSON.stringify(record), { mode: 0o600 });
    chmodSync(`${file}.tmp`, 0o600);
    renameSync(`${file}.tmp`, file);
  }

  get address(): string {
    return this.options.bind;
  }

  /** CURVE handshakes refused so far (0 without CURVE). */
  get refusedHandshakes(): number {
    return this.#zap?.refused ?? 0;
  }

  state(): ControllerState {
    return {
      pid: process.pid,
      address: this.options.bind,
      startedAt: this.startedAt,
      worldSize: this.pool.options.worldSize,
      workers: this.pool.summaries(),
      failures: [...this.pool.failures],
      processGroup: this.processGroup,
      traffic: { ...this.pool.traffic },
    };
  }

  publish<T extends EventTopic>(topic: T, data: EventMap[T]): void {
    void this.#eventOut.send([topic, ...encode({ topic }, "data", data)]);
  }

  async #serve(): Promise<void> {
    try {
      for await (const [routingId, ...frames] of this.#clients) {
        if (routingId) void this.#handle(routingId, frames);
      }
    } catch (error) {
      if (!this.#stopping)
        process.stderr.write(`tiller controller: client socket failed: ${(error as Error).message}\n`);
    }
  }

  /** Answers one client message, exactly once, whatever it holds. */
  async #handle(routingId: Buffer, frames: Buffer[]): Promise<void> {
    let id: number | null = null;
    let reply: ReplyHeader;
    let result: unknown;
    try {
      const header = parseHeader(frames[0]);
      if (typeof header.id === "number" && Number.isSafeInteger(header.id) && header.id >= 0) id = header.id;
      const size = totalBytes(frames);
      if (size > this.#maxMessageBytes) {
        throw new WorkerCallError({
          code: "TOO_LARGE",
          message: `the request holds ${size} bytes; this controller takes at most ${this.#maxMessageBytes}`,
        });
      }
      const request = requestHeader(header, "header");
      if (this.#stopping)
        throw new WorkerCallError({ code: "SHUTTING_DOWN", message: "the controller is shutting down" });
      if (!Object.hasOwn(handlers, request.method)) {
        throw new WorkerCallError({
          code: "UNKNOWN_METHOD",
          message: `unknown method ${JSON.stringify(request.method)}; methods: ${Object.keys(handlers).join(", ")}`,
        });
      }
      const method = request.method as ClientMethod;
      const args = clientMethodArgs[method](
        await placeBodiesGuarded(request.args, request.bodies, frames.slice(1), this.#guard),
        "args",
      );
      const handler = handlers[method] as (ctx: ControllerContext, a: unknown) => Promise<unknown>;
      result = await handler(this, args);
      reply = { id, ok: true, result: undefined };
    } catch (error) {
      reply = { id, ok: false, error: errorBody(error) };
    }
    try {
      await this.#clientOut.send([routingId, ...encode({ ...reply }, "result", result)]);
    } catch (error) {
      // A result that cannot be framed (e.g. a circular object) still gets an answer.
      const body: ErrorBody = {
        code: "INTERNAL",
        message: `cannot send the result: ${(error as Error).message}`,
      };
      await this.#clientOut.send([routingId, JSON.stringify({ id, ok: false, error: body })]);
    }
  }

  shutdown(): Promise<void> {
    this.#stopping ??= (async () => {
      for (const run of this.experiments.values()) {
        run.requestStop();
        await run.close().catch(() => undefined);
      }
      this.experiments.clear();
      await this.pool.shutdown();
      await Promise.race([this.#clientOut.drain(), new Promise((r) => setTimeout(r, 200))]);
      this.#clients.close();
      this.#events.close();
      this.#zap?.close();
      this.#guard.close();
      const file = this.options.stateFile;
      if (file && readControllerRecord(file)?.pid === process.pid) rmSync(file, { force: true });
      this.#resolveStopped();
    })();
    return this.#stopping;
  }
}
