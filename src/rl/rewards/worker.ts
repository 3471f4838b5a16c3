// The reward worker thread: loads reward functions by {module, exportName} (cached) and runs the
// calls of a message one after another, answering each as it finishes.
// Messages: in {ref, calls: [{id, sample}]}; out per call {id, ok: true, result} | {id, ok: false, error}.
import { parentPort } from "node:worker_threads";
import type { RewardFn, RewardFnRef, RewardSample } from "./types.js";

interface Calls {
  ref: RewardFnRef;
  calls: { id: number; sample: RewardSample }[];
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
// Messages run in order, each call after the one before (the runner sends the next message only
// when every call of this one is answered).
let running = Promise.resolve();
port.on("message", (message: Calls) => {
  running = running.then(async () => {
    for (const call of message.calls) {
      try {
        const fn = await fnFor(message.ref);
        const result = await fn(call.sample);
        port.postMessage({ id: call.id, ok: true, result });
      } catch (error) {
        const text = error instanceof Error ? error.message : String(error);
        port.postMessage({ id: call.id, ok: false, error: text });
      }
    }
  });
});
