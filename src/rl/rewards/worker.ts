// The reward worker thread: loads reward functions by {module, exportName} (cached) and answers
// one call at a time. Messages: in {id, ref, sample}; out {id, ok: true, result} | {id, ok: false, error}.
import { parentPort } from "node:worker_threads";
import type { RewardFn, RewardFnRef, RewardSample } from "./types.js";

interface Call {
  id: number;
  ref: RewardFnRef;
  sample: RewardSample;
}

const loaded = new Map<string, Promise<RewardFn>>();

async function load(ref: RewardFnRef): Promise<RewardFn> {
  const mod = (await import(ref.module)) as Record<string, unknown>;
  const fn = mod[ref.exportName];
  if (typeof fn !== "function") {
    const names = Object.keys(mod).join(", ") || "(none)";
    throw new Error(`${ref.module} has no function export "${ref.exportName}"; its exports: ${names}`);
  }
  return fn as RewardFn;
}

function fnFor(ref: RewardFnRef): Promise<RewardFn> {
  const key = `${ref.module}#${ref.exportName}`;
  let fn = loaded.get(key);
  if (fn === undefined) {
    fn = load(ref);
    loaded.set(key, fn);
  }
  return fn;
}

const port = parentPort;
if (port === null) throw new Error("rewards/worker.js must be run as a worker thread");
port.on("message", async (call: Call) => {
  try {
    const fn = await fnFor(call.ref);
    const result = await fn(call.sample);
    port.postMessage({ id: call.id, ok: true, result });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    port.postMessage({ id: call.id, ok: false, error: message });
  }
});
