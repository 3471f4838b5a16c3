// Decodes untrusted Arrow bodies without risking the caller's event loop: the structural check
// (arrow-check.ts) first, then a trial decode in a thread with a bounded heap and a deadline. Only a
// stream that passed both is decoded here. Streams are tried one at a time, so a flood of hostile
// ones delays other Arrow bodies but never the requests that carry none.
import { Worker } from "node:worker_threads";

export interface ArrowGuardOptions {
  /** A trial decode that takes longer is ended and the body refused (default 2000 ms). */
  timeoutMs?: number;
  /** The trial thread's heap limit (default 256 MiB). */
  heapMb?: number;
}

interface Trial {
  id: number;
  bytes: Uint8Array;
  resolve: () => void;
  reject: (error: Error) => void;
}

export class ArrowGuard {
  readonly #timeoutMs: number;
  readonly #heapMb: number;
  #thread: Worker | undefined;
  #queue: Trial[] = [];
  #current: { trial: Trial; timer: NodeJS.Timeout } | undefined;
  #nextId = 1;
  /** Bodies refused by the trial decode (the structural check's refusals are not counted here). */
  refused = 0;

  constructor(options: ArrowGuardOptions = {}) {
    this.#timeoutMs = options.timeoutMs ?? 2000;
    this.#heapMb = options.heapMb ?? 256;
  }

  /** Resolves when `bytes` decodes within the limits; rejects with the reason otherwise. */
  trial(bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ id: this.#nextId++, bytes, resolve, reject });
      this.#next();
    });
  }

  #spawn(): Worker {
    const thread = new Worker(new URL("./arrow-guard-thread.js", import.meta.url), {
      resourceLimits: { maxOldGenerationSizeMb: this.#heapMb, maxYoungGenerationSizeMb: 16 },
    });
    thread.unref();
    thread.on("message", (reply: { id: number; ok: boolean; message?: string }) => {
      const current = this.#current;
      if (!current || current.trial.id !== reply.id) return;
      this.#finish(reply.ok ? undefined : new Error(reply.message ?? "decode failed"));
    });
    const lost = (why: string) => {
      if (this.#thread !== thread) return;
      this.#thread = undefined;
      if (this.#current) this.#finish(new Error(why));
    };
    thread.on("error", (error) => lost(`the decode ran out of bounds (${error.message})`));
    thread.on("exit", (code) => lost(`the decode thread stopped (exit code ${code})`));
    return thread;
  }

  #next(): void {
    if (this.#current) return;
    const trial = this.#queue.shift();
    if (!trial) return;
    this.#thread ??= this.#spawn();
    const thread = this.#thread;
    const timer = setTimeout(() => {
      this.#thread = undefined;
      void thread.terminate();
      this.#finish(new Error(`decoding took longer than ${this.#timeoutMs} ms`));
    }, this.#timeoutMs);
    this.#current = { trial, timer };
    // A copy, handed over (not cloned again): the caller keeps its frame, and nothing is shared
    // with a thread that may be ended.
    const bytes = trial.bytes.slice();
    thread.postMessage({ id: trial.id, bytes }, [bytes.buffer]);
  }

  #finish(error: Error | undefined): void {
    const current = this.#current;
    if (!current) return;
    this.#current = undefined;
    clearTimeout(current.timer);
    if (error) {
      this.refused++;
      current.trial.reject(error);
    } else current.trial.resolve();
    this.#next();
  }

  close(): void {
    for (const trial of this.#queue.splice(0)) trial.reject(new Error("closed"));
    if (this.#current) this.#finish(new Error("closed"));
    void this.#thread?.terminate();
    this.#thread = undefined;
  }
}
