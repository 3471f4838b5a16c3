// What a notebook imports: connect() to a controller (the local one by default, started when none
// runs), typed calls with many in flight, worker commands on ranks, and the event stream.
import { spawn } from "node:child_process";
import { mkdirSync, openSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as zmq from "zeromq";
import { processAlive, readControllerRecord } from "../controller/server.js";
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
import { createExperiment, Experiment, resumeExperiment } from "./experiment.js";
import { controllerLogFile, controllerRecordFile, defaultAddress, tillerHome } from "./home.js";

/** A failed call: the controller's error body (code, field, rank, command, stderr tail) on it. */
export class TillerError extends Error {
  readonly code: ErrorBody["code"] | "TIMEOUT" | "CLOSED";
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

export interface ConnectOptions {
  curve?: CurveClientKeys;
  /** How long connecting waits for the controller's first answer (default 5 s; 60 s when starting one). */
  timeoutMs?: number;
  /** Without an address: start a local controller when none runs (default true). */
  start?: boolean;
  /** Arguments for a controller started here, e.g. ["--cpu", "2"] (default: its own choice). */
  controllerArgs?: string[];
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
  /** Replies that matched no request in flight (a lost or duplicated reply shows here). */
  unmatchedReplies = 0;
  /** True when connect() started the controller this cluster talks to. */
  started = false;

  constructor(
    readonly address: string,
    curve?: CurveClientKeys,
  ) {
    const endpoints = endpointsOf(address);
    this.#requests = new zmq.Dealer({ linger: 0 });
    this.#events = new zmq.Subscriber({ linger: 0 });
    if (curve) {
      applyClientKeys(this.#requests, curve);
      applyClientKeys(this.#events, curve);
    }
    this.#requests.connect(connectableFrom(endpoints.clients));
    this.#events.connect(connectableFrom(endpoints.events));
    this.#events.subscribe();
    this.#out = new SendQueue(this.#requests);
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
        } catch {
          this.unmatchedReplies++;
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
    } catch {
      // closed
    }
  }

  async #receiveEvents(): Promise<void> {
    try {
      for await (const [topic, ...frames] of this.#events) {
        const name = topic?.toString() ?? "";
        const listeners = this.#listeners.get(name);
        if (!listeners || listeners.size === 0) continue;
        try {
          const { payload } = decode(frames, "data");
          for (const listener of listeners) listener(payload as never);
        } catch {
          // a malformed event is dropped; events are advisory
        }
      }
    } catch {
      // closed
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

  /** Continues an experiment from a checkpoint folder, or a run folder's newest checkpoint. */
  resume(path: string, options: { totalSteps?: number } = {}): Promise<Experiment> {
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
    for (const [id, pending] of this.#pending) {
      clearTimeout(pending.timer);
      pending.reject(new TillerError({ code: "CLOSED", message: "this cluster was closed" }));
      this.#pending.delete(id);
    }
    this.#requests.close();
    this.#events.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

async function attach(address: string, options: ConnectOptions, timeoutMs: number): Promise<Cluster> {
  const cluster = new Cluster(address, options.curve);
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
  mkdirSync(home, { recursive: true });
  const log = openSync(controllerLogFile(home), "a");
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
  if (address) return attach(address, options, options.timeoutMs ?? 5000);
  const home = tillerHome();
  const record = readControllerRecord(controllerRecordFile(home));
  if (record && processAlive(record.pid)) {
    try {
      return await attach(record.address, options, options.timeoutMs ?? 5000);
    } catch (error) {
      throw new Error(
        `a controller (pid ${record.pid}) is recorded at ${record.address} but does not answer ` +
          `(${(error as Error).message}); see ${controllerLogFile(home)}, or stop it and connect again`,
      );
    }
  }
  if (options.start === false)
    throw new Error(`no controller runs in ${home}; start one with \`tiller controller\``);
  const pid = startLocalController(home, options.controllerArgs ?? []);
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
