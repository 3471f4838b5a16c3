// What a notebook imports: connect() to a controller (the local one by default, started when none
// runs), typed calls with many in flight, worker commands on ranks, and the event stream.
import { spawn } from "node:child_process";
import { chmodSync, mkdirSync, openSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as zmq from "zeromq";
import { processAlive, readControllerRecord } from "../controller/server.js";
import type { PlanConfig } from "../plan/config.js";
import type { Plan } from "../plan/plan.js";
import { connectableFrom, endpointsOf } from "../protocol/endpoints.js";
import { decode, encode } from "../protocol/frames.js";
import { applyClientKeys, type CurveClientKeys } from "../protocol/keys.js";
import type {
  ClientMethod,
  ClientMethodResults,
  ControllerState,
  ErrorBody,
  EventMap,
  EventTopic,
  RankResult,
  WorkerCommand,
  WorkerCommandArgs,
  WorkerCommandResults,
} from "../protocol/messages.js";
import { SendQueue } from "../protocol/socket.js";
import type { ExperimentConfig } from "../rl/config.js";
import { createExperiment, Experiment, type ResumeOptions, resumeExperiment } from "./experiment.js";
import { controllerLogFile, controllerRecordFile, defaultAddress, tillerHome } from "./home.js";

/** A failed call: the controller's error body (code, field, rank, command, stderr tail) on it. */
export class TillerError extends Error {
  readonly code: ErrorBody["code"] | "TIMEOUT" | "CLOSED" | "CONTROLLER_LOST";
  readonly field?: string;
  readonly rank?: number;
  readonly command?: string;
  readonly stderrTail?: string;

  constructor(body: Omit<ErrorBody, "code"> & { code: TillerError["code"] }) {
    const where =
      body.rank !== undefined ? ` [rank ${body.rank}${body.command ? `, ${body.command}` : ""}]` : "";
    super(`${body.code}${where}: ${body.message}`);
    this.code = body.code;
    if (body.field !== undefined) this.field = body.field;
    if (body.rank !== undefined) this.rank = body.rank;
    if (body.command !== undefined) this.command = body.command;
    if (body.stderrTail !== undefined) this.stderrTail = body.stderrTail;
  }
}

export interface CallOptions {
  /** Reject with TIMEOUT when no reply comes in time (default: wait as long as the work takes). */
  timeoutMs?: number;
}

/** How a client watches the controller's liveness (ZeroMQ heartbeats on the request socket). */
export interface LivenessOptions {
  /** A heartbeat is sent this often (default 1000 ms). */
  heartbeatMs?: number;
  /** A controller silent this long counts as lost: every call in flight is rejected (default 15 s). */
  controllerTimeoutMs?: number;
}

export interface ConnectOptions extends LivenessOptions {
  curve?: CurveClientKeys;
  /** How long connecting waits for the controller's first answer (default 5 s; 60 s when starting one). */
  timeoutMs?: number;
  /** Without an address: start a local controller when none runs (default true). */
  start?: boolean;
  /** Arguments for a controller started here, e.g. ["--cpu", "2"] (default: its own choice). */
  controllerArgs?: string[];
  /**
   * Without an address: the local controller runs this many CPU worker processes (`--cpu N`), so a
   * laptop runs a TP2×DP2 experiment with `cpu: 4`. A running one with another count is an error.
   */
  cpu?: number;
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: TillerError) => void;
  timer?: NodeJS.Timeout;
}

type Listener<T extends EventTopic> = (data: EventMap[T]) => void;

const cliPath = fileURLToPath(new URL("../cli/main.js", import.meta.url));

export class Cluster {
  readonly #requests: zmq.Dealer;
  readonly #out: SendQueue;
  readonly #events: zmq.Subscriber;
  readonly #pending = new Map<number, Pending>();
  readonly #listeners = new Map<string, Set<(data: never) => void>>();
  #nextId = 1;
  #closed = false;
  /** "down" after the connection to the controller dropped, until it is made again. */
  #link: "connecting" | "up" | "down" = "connecting";
  #lostReason = "";
  /** Replies that matched no request in flight (a lost or duplicated reply shows here). */
  unmatchedReplies = 0;
  /** Replies or events that could not be decoded (each also logged). */
  malformedMessages = 0;
  /** Event listeners that threw (each also logged). */
  listenerErrors = 0;
  /** True when connect() started the controller this cluster talks to. */
  started = false;

  constructor(
    readonly address: string,
    curve?: CurveClientKeys,
    liveness: LivenessOptions = {},
  ) {
    const endpoints = endpointsOf(address);
    const heartbeatMs = liveness.heartbeatMs ?? 1000;
    const controllerTimeoutMs = liveness.controllerTimeoutMs ?? 15_000;
    this.#requests = new zmq.Dealer({
      linger: 0,
      // ZeroMQ's own heartbeats: a controller that is killed closes the connection at once, one that
      // is stopped or cut off misses them; both end in "disconnect", and the calls in flight fail.
      heartbeatInterval: heartbeatMs,
      heartbeatTimeout: controllerTimeoutMs,
      heartbeatTimeToLive: controllerTimeoutMs,
      handshakeInterval: controllerTimeoutMs,
    });
    this.#events = new zmq.Subscriber({ linger: 0 });
    if (curve) {
      applyClientKeys(this.#requests, curve);
      applyClientKeys(this.#events, curve);
    }
    this.#requests.connect(connectableFrom(endpoints.clients));
    this.#events.connect(connectableFrom(endpoints.events));
    this.#events.subscribe();
    this.#out = new SendQueue(this.#requests);
    // Up once ZeroMQ's handshake is done (a stopped process still accepts the bare connection).
    this.#requests.events.on("handshake", () => {
      this.#link = "up";
    });
    this.#requests.events.on("disconnect", () => {
      // Before the first handshake a drop is a refused key or a controller not yet up: the call's
      // own timeout (connect's) reports it.
      if (this.#closed || this.#link !== "up") return;
      this.#link = "down";
      this.#lostReason =
        `the connection to the controller at ${address} dropped at ${new Date().toISOString()} ` +
        `(it stopped, was killed, or was silent for ${controllerTimeoutMs} ms)`;
      this.#rejectAll("CONTROLLER_LOST", `${this.#lostReason}; the calls in flight are lost`);
    });
    void this.#receiveReplies();
    void this.#receiveEvents();
  }

  async #receiveReplies(): Promise<void> {
    try {
      for await (const frames of this.#requests) {
        let header: Record<string, unknown>;
        let result: unknown;
        try {
          ({ header, payload: result } = decode(frames, "result"));
        } catch (error) {
          this.malformedMessages++;
          process.stderr.write(
            `tiller: dropped a reply that cannot be decoded: ${(error as Error).message}\n`,
          );
          continue;
        }
        const pending = typeof header.id === "number" ? this.#pending.get(header.id) : undefined;
        if (!pending) {
          this.unmatchedReplies++;
          continue;
        }
        this.#pending.delete(header.id as number);
        clearTimeout(pending.timer);
        if (header.ok === true) pending.resolve(result);
        else pending.reject(new TillerError(header.error as ErrorBody));
      }
    } catch (error) {
      if (!this.#closed) this.#failed("request", error);
    }
  }

  /** A receive loop ended while the cluster is open: nothing more can arrive, so say so. */
  #failed(socket: string, error: unknown): void {
    const message = `the ${socket} socket to ${this.address} failed: ${(error as Error).message}`;
    process.stderr.write(`tiller: ${message}\n`);
    this.#link = "down";
    this.#lostReason = message;
    this.#rejectAll("CONTROLLER_LOST", message);
  }

  #rejectAll(code: TillerError["code"], message: string): void {
    for (const [id, pending] of this.#pending) {
      clearTimeout(pending.timer);
      pending.reject(new TillerError({ code, message }));
      this.#pending.delete(id);
    }
  }

  async #receiveEvents(): Promise<void> {
    try {
      for await (const [topic, ...frames] of this.#events) {
        const name = topic?.toString() ?? "";
        const listeners = this.#listeners.get(name);
        if (!listeners || listeners.size === 0) continue;
        let payload: unknown;
        try {
          ({ payload } = decode(frames, "data"));
        } catch (error) {
          this.malformedMessages++;
          process.stderr.write(
            `tiller: dropped a ${name} event that cannot be decoded: ${(error as Error).message}\n`,
          );
          continue;
        }
        for (const listener of listeners) {
          try {
            listener(payload as never);
          } catch (error) {
            // One listener's fault must not stop the others or the event stream.
            this.listenerErrors++;
            process.stderr.write(`tiller: a ${name} listener threw: ${(error as Error).stack ?? error}\n`);
          }
        }
      }
    } catch (error) {
      if (!this.#closed) this.#failed("event", error);
    }
  }

  /** Calls a controller method; many calls may be in flight, replies come in any order. */
  call<M extends ClientMethod>(
    method: M,
    args: unknown,
    options: CallOptions = {},
  ): Promise<ClientMethodResults[M]> {
    if (this.#closed)
      return Promise.reject(new TillerError({ code: "CLOSED", message: "this cluster was closed" }));
    if (this.#link === "down") {
      // Sent now, the call would wait in ZeroMQ's queue and run on whatever controller comes next.
      return Promise.reject(
        new TillerError({ code: "CONTROLLER_LOST", message: `${this.#lostReason}; connect again` }),
      );
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const pending: Pending = { resolve: resolve as (v: unknown) => void, reject };
      if (options.timeoutMs !== undefined) {
        pending.timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(
            new TillerError({
              code: "TIMEOUT",
              message: `no reply to ${method} from ${this.address} within ${options.timeoutMs} ms`,
            }),
          );
        }, options.timeoutMs);
      }
      this.#pending.set(id, pending);
      let frames: Uint8Array[];
      try {
        frames = encode({ id, method }, "args", args);
      } catch (error) {
        this.#pending.delete(id);
        clearTimeout(pending.timer);
        reject(new TillerError({ code: "BAD_ARGS", message: (error as Error).message }));
        return;
      }
      void this.#out.send(frames);
    });
  }

  /** Runs a worker command on some ranks (all by default); one result per rank, by rank. */
  run<C extends WorkerCommand>(
    command: C,
    args: WorkerCommandArgs<C>,
    options: CallOptions & { ranks?: number[] } = {},
  ): Promise<RankResult<WorkerCommandResults[C]>[]> {
    const { ranks, timeoutMs } = options;
    return this.call(
      "run",
      { command, args, ...(ranks ? { ranks } : {}) },
      timeoutMs ? { timeoutMs } : {},
    ) as Promise<RankResult<WorkerCommandResults[C]>[]>;
  }

  status(options: CallOptions = {}): Promise<ControllerState> {
    return this.call("status", {}, options);
  }

  /**
   * The planner (src/plan) run by the controller for this cluster: `gpus` defaults to its ranks
   * (the recipe's when a recipe is named), `gpu` to the type its workers report, `device` to "cpu"
   * when no worker runs on CUDA; paths are read on the controller's host. Errors name the config field.
   */
  plan(config: PlanConfig, options: CallOptions = {}): Promise<Plan> {
    return this.call(
      "plan",
      { config: config as unknown as Record<string, unknown> },
      options,
    ) as Promise<Plan>;
  }

  initProcessGroup(backend?: "gloo" | "nccl"): Promise<ClientMethodResults["initProcessGroup"]> {
    return this.call("initProcessGroup", backend ? { backend } : {});
  }

  /** Waits until `count` workers have joined (polling status). */
  async waitForWorkers(count: number, timeoutMs = 60_000): Promise<ControllerState> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const state = await this.status({ timeoutMs: Math.max(deadline - Date.now(), 1) });
      if (state.workers.length >= count) return state;
      if (Date.now() > deadline) {
        throw new TillerError({
          code: "TIMEOUT",
          message: `${state.workers.length} of ${count} workers joined within ${timeoutMs} ms`,
        });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Listens to one event topic; returns the function that stops listening. */
  on<T extends EventTopic>(topic: T, listener: Listener<T>): () => void {
    const set = this.#listeners.get(topic) ?? new Set();
    this.#listeners.set(topic, set);
    set.add(listener as (data: never) => void);
    return () => set.delete(listener as (data: never) => void);
  }

  /** Builds an experiment (see ExperimentConfig); the config is checked here first, naming the field. */
  experiment(config: ExperimentConfig): Promise<Experiment> {
    return createExperiment(this, config);
  }

  /**
   * Continues an experiment from a checkpoint folder, or a run folder's newest checkpoint;
   * `parallel` continues it in another layout (e.g. saved at TP2×DP2, resumed on one rank).
   */
  resume(path: string, options: ResumeOptions = {}): Promise<Experiment> {
    return resumeExperiment(this, path, options);
  }

  /** The experiments the controller holds (e.g. to reattach after a kernel restart). */
  async experiments(): Promise<Experiment[]> {
    const list = await this.call("experiment.list", {});
    return list.map((status) => new Experiment(this, status));
  }

  /** Stops the controller and its workers. */
  async shutdown(): Promise<void> {
    await this.call("shutdown", {}, { timeoutMs: 10_000 });
  }

  /** Closes this client's sockets; the controller keeps running. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#rejectAll("CLOSED", "this cluster was closed");
    this.#requests.close();
    this.#events.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

async function attach(address: string, options: ConnectOptions, timeoutMs: number): Promise<Cluster> {
  const cluster = new Cluster(address, options.curve, options);
  try {
    await cluster.status({ timeoutMs });
    return cluster;
  } catch (error) {
    cluster.close();
    throw error;
  }
}

/** Starts the local controller in the background, detached, so it outlives this process. */
function startLocalController(home: string, controllerArgs: string[]): number {
  // Private whatever the umask: its sockets drive the controller with this user's rights.
  mkdirSync(home, { recursive: true, mode: 0o700 });
  chmodSync(home, 0o700);
  const log = openSync(controllerLogFile(home), "a", 0o600);
  const child = spawn(process.execPath, [cliPath, "controller", ...controllerArgs], {
    detached: true,
    stdio: ["ignore", log, log],
    env: { ...process.env, TILLER_HOME: home },
  });
  child.unref();
  return child.pid ?? 0;
}

/**
 * Attaches to a controller. With an address: that one. Without: the local controller recorded in
 * $TILLER_HOME (or ~/.tiller), started first when none runs there.
 */
export async function connect(address?: string, options: ConnectOptions = {}): Promise<Cluster> {
  const cpu = options.cpu;
  if (cpu !== undefined && (!Number.isInteger(cpu) || cpu < 1)) {
    throw new TypeError(`cpu: ${JSON.stringify(cpu)} must be a positive integer (worker processes)`);
  }
  if (address) return attach(address, options, options.timeoutMs ?? 5000);
  const home = tillerHome();
  const record = readControllerRecord(controllerRecordFile(home));
  if (record && processAlive(record.pid)) {
    let cluster: Cluster;
    try {
      cluster = await attach(record.address, options, options.timeoutMs ?? 5000);
    } catch (error) {
      throw new Error(
        `a controller (pid ${record.pid}) is recorded at ${record.address} but does not answer ` +
          `(${(error as Error).message}); see ${controllerLogFile(home)}, or stop it and connect again`,
      );
    }
    const worldSize = cpu === undefined ? cpu : (await cluster.status()).worldSize;
    if (worldSize !== undefined && worldSize !== cpu) {
      cluster.close();
      throw new Error(
        `cpu: ${cpu}, but the local controller (pid ${record.pid}) runs ${worldSize} workers; ` +
          "shut it down (cluster.shutdown()) to start one with the new count",
      );
    }
    return cluster;
  }
  if (options.start === false)
    throw new Error(`no controller runs in ${home}; start one with \`tiller controller\``);
  const pid = startLocalController(home, [
    ...(cpu !== undefined ? ["--cpu", String(cpu)] : []),
    ...(options.controllerArgs ?? []),
  ]);
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  while (Date.now() < deadline) {
    const fresh = readControllerRecord(controllerRecordFile(home));
    if (fresh?.pid === pid) {
      const cluster = await attach(fresh.address, options, Math.max(deadline - Date.now(), 1));
      cluster.started = true;
      return cluster;
    }
    if (!processAlive(pid)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the local controller (pid ${pid}) did not come up; see ${controllerLogFile(home)}`);
}

export { defaultAddress };
