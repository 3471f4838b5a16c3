// Runs reward functions off the main thread: a pool of worker_threads, each running one call at a
// time (so concurrency ≤ workers), a per-call timeout that terminates a hung worker and starts a
// fresh one, and per-sample errors captured instead of thrown. A worker is sent a few queued calls
// in one message (a message costs the main thread ~20 µs, a quickstart step scores 128 one-token
// answers) and answers each as it finishes, which starts the next call's timeout.
import { isAbsolute } from "node:path";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { defaultComputeScoreRef } from "./registry.js";
import type { RewardFnRef, RewardResult, RewardSample } from "./types.js";

export interface RewardRunnerOptions {
  /** The function every sample is scored with; default verl's default_compute_score (by data_source). */
  fn?: RewardFnRef;
  /** Worker threads = the most calls in flight at once. Default 4. */
  workers?: number;
  /** Per-call limit; a call still running is abandoned, its worker terminated and replaced. Default 30 s. */
  timeoutMs?: number;
}

/** A scored sample. On "timeout" and "error", score is 0 and `reason` says why. */
export interface RewardOutcome {
  score: number;
  status: "ok" | "timeout" | "error";
  reason?: string;
  /** The function's result minus `score` (verl's reward_extra_info). */
  metrics: Record<string, unknown>;
  durationMs: number;
}

interface Job {
  sample: RewardSample;
  resolve: (outcome: RewardOutcome) => void;
}

interface Slot {
  worker: Worker;
  /** The calls sent to this worker, in the order it runs them: the first is running. */
  jobs: { id: number; job: Job }[];
  /** The running call's timeout and start. */
  timer?: NodeJS.Timeout;
  startedAt: number;
}

/** Queued calls per worker message: a share of the queue small enough to keep the workers balanced. */
export function callsPerMessage(queued: number, workers: number): number {
  return Math.max(1, Math.ceil(queued / (workers * 4)));
}

const workerUrl = new URL("./worker.js", import.meta.url);

/** Makes `module` importable from a worker: absolute paths become file:// URLs. */
function resolveRef(ref: RewardFnRef): RewardFnRef {
  return isAbsolute(ref.module) ? { ...ref, module: pathToFileURL(ref.module).href } : ref;
}

export class RewardRunner {
  readonly workers: number;
  readonly timeoutMs: number;
  private readonly ref: RewardFnRef;
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 0;
  private closed = false;
  /** Calls that timed out or whose worker died, i.e. workers replaced. */
  replacedWorkers = 0;

  constructor(options: RewardRunnerOptions = {}) {
    this.workers = options.workers ?? 4;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    if (!Number.isInteger(this.workers) || this.workers < 1) {
      throw new Error(`RewardRunner: workers must be a positive integer, got ${this.workers}`);
    }
    if (!(this.timeoutMs > 0)) throw new Error(`RewardRunner: timeoutMs must be > 0, got ${this.timeoutMs}`);
    this.ref = resolveRef(options.fn ?? defaultComputeScoreRef);
    for (let i = 0; i < this.workers; i++) this.slots.push(this.spawn());
  }

  /** Scores one sample; never rejects (errors and timeouts come back as outcomes). */
  scoreOne(sample: RewardSample): Promise<RewardOutcome> {
    if (this.closed) return Promise.reject(new Error("RewardRunner: score() after close()"));
    return new Promise((resolve) => {
      this.queue.push({ sample, resolve });
      this.pump();
    });
  }

  /** Scores samples with bounded concurrency; outcomes are in input order. */
  score(samples: readonly RewardSample[]): Promise<RewardOutcome[]> {
    return Promise.all(samples.map((s) => this.scoreOne(s)));
  }

  /** Terminates the workers; calls in flight or queued resolve as errors. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const job of this.queue.splice(0)) job.resolve(failed("error", "runner closed", 0));
    await Promise.all(
      this.slots.map(async (slot) => {
        while (slot.jobs.length > 0) this.finish(slot, failed("error", "runner closed", 0));
        await slot.worker.terminate();
      }),
    );
  }

  private spawn(): Slot {
    const slot: Slot = { worker: new Worker(workerUrl), jobs: [], startedAt: 0 };
    slot.worker.on("message", (msg: { id: number; ok: boolean; result?: RewardResult; error?: string }) => {
      const current = slot.jobs[0];
      if (current === undefined || current.id !== msg.id) return;
      const durationMs = performance.now() - slot.startedAt;
      this.finish(
        slot,
        msg.ok ? fromResult(msg.result, durationMs) : failed("error", msg.error ?? "", durationMs),
      );
      if (slot.jobs.length > 0) this.startTimer(slot);
      else this.pump();
    });
    // An uncaught error inside the reward function's module (e.g. a throw in a timer) kills the
    // worker: fail its call and replace it.
    slot.worker.on("error", (error) => this.replace(slot, "error", `worker died: ${error.message}`));
    slot.worker.on("exit", (code) => {
      if (!this.closed && slot.jobs.length > 0)
        this.replace(slot, "error", `worker exited with code ${code}`);
    });
    return slot;
  }

  /** Resolves the running call (the slot's first) with `outcome`. */
  private finish(slot: Slot, outcome: RewardOutcome): void {
    const current = slot.jobs.shift();
    if (current === undefined) return;
    clearTimeout(slot.timer);
    slot.timer = undefined;
    current.job.resolve(outcome);
  }

  /** The slot's first call starts now: its timeout runs from here. */
  private startTimer(slot: Slot): void {
    slot.startedAt = performance.now();
    slot.timer = setTimeout(
      () => this.replace(slot, "timeout", `reward function timed out after ${this.timeoutMs} ms`),
      this.timeoutMs,
    );
  }

  /** Fails the running call, puts the calls sent after it back at the queue's front, and starts a fresh worker. */
  private replace(slot: Slot, status: "timeout" | "error", reason: string): void {
    const index = this.slots.indexOf(slot);
    if (index < 0 || this.closed) return;
    this.finish(slot, failed(status, reason, performance.now() - slot.startedAt));
    this.queue.unshift(...slot.jobs.splice(0).map((j) => j.job));
    slot.worker.removeAllListeners();
    slot.worker.on("error", () => {}); // late errors from the dying worker are not ours to report
    void slot.worker.terminate();
    this.replacedWorkers++;
    this.slots[index] = this.spawn();
    this.pump();
  }

  private pump(): void {
    for (const slot of this.slots) {
      while (this.queue.length > 0 && slot.jobs.length === 0) this.send(slot);
    }
  }

  /** Sends the next queued calls to an idle slot. */
  private send(slot: Slot): void {
    const jobs = this.queue.splice(0, callsPerMessage(this.queue.length, this.slots.length));
    const calls = jobs.map((job) => ({ id: this.nextId++, sample: job.sample }));
    try {
      slot.worker.postMessage({ ref: this.ref, calls });
    } catch (error) {
      // A sample could not be cloned (a function or symbol in `extra`): it fails, the others go back.
      const sendable = jobs.filter((job) => {
        try {
          structuredClone(job.sample);
          return true;
        } catch (cloneError) {
          job.resolve(failed("error", `sample not transferable: ${(cloneError as Error).message}`, 0));
          return false;
        }
      });
      if (sendable.length === jobs.length) {
        for (const job of jobs) job.resolve(failed("error", `not sent: ${(error as Error).message}`, 0));
      } else {
        this.queue.unshift(...sendable);
      }
      return;
    }
    slot.jobs = calls.map((c, i) => ({ id: c.id, job: jobs[i] as Job }));
    this.startTimer(slot);
  }
}

function failed(status: "timeout" | "error", reason: string, durationMs: number): RewardOutcome {
  return { score: 0, status, reason, metrics: {}, durationMs };
}

function fromResult(result: RewardResult | undefined, durationMs: number): RewardOutcome {
  if (result === null || typeof result !== "object" || typeof result.score !== "number") {
    // verl also accepts a bare number from compute_score; so do we.
    if (typeof result === "number" || typeof result === "boolean") {
      return { score: Number(result), status: "ok", metrics: {}, durationMs };
    }
    return failed(
      "error",
      `reward function returned ${JSON.stringify(result)}, not {score: number}`,
      durationMs,
    );
  }
  const { score, ...metrics } = result;
  if (!Number.isFinite(score)) return failed("error", `reward function returned score ${score}`, durationMs);
  return { score, status: "ok", metrics, durationMs };
}
