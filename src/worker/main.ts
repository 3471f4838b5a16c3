// A worker process: joins the controller, takes a rank, runs commands one at a time on the engine,
// and heartbeats meanwhile (engine calls are async, so the event loop stays free). It exits when
// told to, on SIGTERM/SIGINT, when the controller falls silent, or (when the controller spawned
// it) when its stdin closes — so a dead controller leaves no orphans.
import { hostname } from "node:os";
import * as zmq from "zeromq";
import { connectableFrom, endpointsOf } from "../protocol/endpoints.js";
import { decode, encode } from "../protocol/frames.js";
import { applyClientKeys, type CurveClientKeys } from "../protocol/keys.js";
import {
  type ControllerToWorker,
  type ErrorBody,
  type WorkerCommand,
  workerCommandArgs,
} from "../protocol/messages.js";
import { ValidationError } from "../protocol/schema.js";
import { SendQueue } from "../protocol/socket.js";
import { CommandError, commandTable, WorkerState } from "./commands.js";

export interface WorkerOptions {
  /** The controller's address, as clients use it; the worker socket is derived from it. */
  controller: string;
  curve?: CurveClientKeys;
  /** A rank the launcher chose (RANK / SLURM_PROCID); the controller decides when absent. */
  rank?: number;
  /** How other ranks reach this host (for the c10d store on rank 0). */
  host?: string;
  /** Exit when stdin ends: set for workers the controller spawned. */
  exitWithStdin?: boolean;
  /** Give up when no welcome comes within this time. */
  joinTimeoutMs?: number;
}

const stderrTailBytes = 4096;

/** Keeps the last few KiB written to stderr, to ship with heartbeats (a remote worker's last words). */
function captureStderrTail(): () => string {
  let tail = "";
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    tail = (tail + (typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"))).slice(
      -stderrTailBytes,
    );
    return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  return () => tail;
}

function errorBody(error: unknown): ErrorBody {
  const e = error as Error & { code?: string; field?: string };
  const code =
    error instanceof ValidationError ? "BAD_ARGS" : error instanceof CommandError ? e.code : "WORKER_ERROR";
  return {
    code: code as ErrorBody["code"],
    message: e.message ?? String(error),
    ...(e.field ? { field: e.field } : {}),
    ...(e.stack ? { stack: e.stack } : {}),
  };
}

export async function runWorker(options: WorkerOptions): Promise<number> {
  const stderrTail = captureStderrTail();
  const socket = new zmq.Dealer({ linger: 0 });
  if (options.curve) applyClientKeys(socket, options.curve);
  socket.connect(connectableFrom(endpointsOf(options.controller).workers));
  const out = new SendQueue(socket);
  const send = (message: Record<string, unknown>, payloadKey = "result", payload?: unknown) =>
    out.send(encode(message, payloadKey, payload));

  const state = new WorkerState(options.host ?? "127.0.0.1");
  let rank: number | undefined;
  let lastHeard = Date.now();
  let exitCode: number | undefined;
  let timer: NodeJS.Timeout | undefined;
  let queue: Promise<void> = Promise.resolve();
  let lastSentTail = "";

  const stop = (code: number, why: string) => {
    if (exitCode !== undefined) return;
    exitCode = code;
    if (why) process.stderr.write(`tiller worker${rank === undefined ? "" : ` ${rank}`}: ${why}\n`);
    if (timer) clearInterval(timer);
    socket.close();
  };
  const onSignal = (signal: string) => stop(0, `${signal}: shutting down`);
  process.once("SIGTERM", () => onSignal("SIGTERM"));
  process.once("SIGINT", () => onSignal("SIGINT"));
  if (options.exitWithStdin) {
    process.stdin.on("end", () => stop(3, "the controller that started this worker is gone"));
    process.stdin.on("error", () => stop(3, "the controller that started this worker is gone"));
    process.stdin.resume();
  }

  const join = {
    type: "join",
    pid: process.pid,
    hostname: hostname(),
    host: state.host,
    device: state.device,
    memory: state.info().memory,
    ...(options.rank !== undefined ? { rank: options.rank } : {}),
  };
  await out.send([Buffer.from(JSON.stringify(join))]);
  const joinTimeoutMs = options.joinTimeoutMs ?? 30_000;
  const joinTimer = setTimeout(() => {
    if (rank === undefined)
      stop(4, `no answer from the controller at ${options.controller} within ${joinTimeoutMs} ms`);
  }, joinTimeoutMs);

  const run = (
    id: number,
    command: WorkerCommand,
    rawArgs: unknown,
    relay?: { mode: "send" | "receive"; frames: Uint8Array[] },
  ) => {
    // One command at a time: engine handles are not shared between concurrent native calls. A
    // relay's broadcast runs in this order too, so a replica's ranks meet in it command by command.
    queue = queue.then(async () => {
      try {
        let given = rawArgs;
        if (relay?.mode === "send") await state.relaySend(relay.frames);
        else if (relay?.mode === "receive") {
          const relayed = decode(await state.relayReceive(), "args").payload as Record<string, unknown>;
          given = { ...relayed, ...(rawArgs as Record<string, unknown>) };
        }
        const args = workerCommandArgs[command](given, "args");
        const handler = commandTable[command] as (s: WorkerState, a: unknown) => Promise<unknown>;
        const result = await handler(state, args);
        await send({ type: "reply", id, ok: true }, "result", result);
      } catch (error) {
        await send({ type: "reply", id, ok: false, error: errorBody(error) });
      }
    });
  };

  try {
    for await (const frames of socket) {
      lastHeard = Date.now();
      let message: ControllerToWorker;
      let args: unknown;
      try {
        const decoded = decode(frames, "args");
        message = decoded.header as unknown as ControllerToWorker;
        args = decoded.payload;
      } catch (error) {
        process.stderr.write(
          `tiller worker: dropped a malformed controller message: ${(error as Error).message}\n`,
        );
        continue;
      }
      if (message.type === "welcome") {
        clearTimeout(joinTimer);
        rank = message.rank;
        const { heartbeatMs, controllerTimeoutMs } = message;
        timer = setInterval(() => {
          if (Date.now() - lastHeard > controllerTimeoutMs) {
            stop(3, `no word from the controller for ${controllerTimeoutMs} ms`);
            return;
          }
          const tail = stderrTail();
          void send(tail !== lastSentTail ? { type: "heartbeat", stderrTail: tail } : { type: "heartbeat" });
          lastSentTail = tail;
        }, heartbeatMs);
      } else if (message.type === "refuse") {
        stop(5, `the controller refused this worker: ${message.reason}`);
      } else if (message.type === "exit") {
        stop(0, "");
      } else if (message.type === "command") {
        if (!Object.hasOwn(commandTable, message.command)) {
          await send({
            type: "reply",
            id: message.id,
            ok: false,
            error: {
              code: "UNKNOWN_METHOD",
              message: `unknown worker command ${JSON.stringify(message.command)}`,
            },
          });
        } else
          run(message.id, message.command, args, message.relay ? { mode: message.relay, frames } : undefined);
      }
    }
  } catch (error) {
    if (exitCode === undefined) stop(1, `socket failed: ${(error as Error).message}`);
  }
  clearTimeout(joinTimer);
  state.dispose();
  return exitCode ?? 0;
}
