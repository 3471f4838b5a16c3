// A run's progress, drawn where the run is watched: one `\r`-updated line on a terminal, plain
// lines in a log file, an HTML block updated in place in a tslab notebook.
import { inNotebook, LiveOutput } from "./display.js";

export interface ProgressState {
  /** The stage running now (`gen`, `reward`, `update` …). */
  stage: string;
  /** Steps finished so far, from 0 to `totalSteps`. */
  step: number;
  /** Steps in the run. */
  totalSteps: number;
  /** Tokens processed since the run started, for the total and the tokens-per-second rate. */
  tokens?: number;
  /** The mean reward of the latest step. */
  reward?: number;
  /** Seconds since the run started. */
  elapsedS: number;
}

function checkState(state: ProgressState): void {
  const { step, totalSteps, elapsedS, tokens } = state;
  if (!Number.isInteger(totalSteps) || totalSteps < 1) {
    throw new RangeError(`progress.totalSteps: expected an integer ≥ 1, got ${totalSteps}`);
  }
  if (!Number.isInteger(step) || step < 0 || step > totalSteps) {
    throw new RangeError(
      `progress.step: expected an integer in [0, ${totalSteps}] (steps finished), got ${step}`,
    );
  }
  if (!Number.isFinite(elapsedS) || elapsedS < 0) {
    throw new RangeError(`progress.elapsedS: expected seconds ≥ 0, got ${elapsedS}`);
  }
  if (tokens !== undefined && !(Number.isFinite(tokens) && tokens >= 0)) {
    throw new RangeError(`progress.tokens: expected a count ≥ 0, got ${tokens}`);
  }
}

/** `42s`, `3m07s`, `2h05m`. */
export function formatDuration(seconds: number): string {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** Three significant digits with an SI suffix: `950`, `1.23k`, `45.6M`. */
export function formatCount(n: number): string {
  if (n < 1000) return String(Math.round(n));
  const units: [string, number][] = [
    ["k", 1e3],
    ["M", 1e6],
    ["G", 1e9],
    ["T", 1e12],
  ];
  for (let i = 0; i < units.length; i++) {
    const [suffix, size] = units[i] as [string, number];
    const digits = (n / size).toPrecision(3);
    // 999_999 rounds to 1000k: that belongs to the next unit.
    if (Number(digits) < 1000 || i === units.length - 1) return `${digits}${suffix}`;
  }
  throw new Error("unreachable");
}

function formatReward(reward: number): string {
  if (Number.isNaN(reward)) return "nan";
  return Math.abs(reward) < 1000 ? reward.toFixed(3) : reward.toPrecision(4);
}

/** Seconds left, from the mean time per finished step; undefined before the first step ends. */
export function etaSeconds(state: ProgressState): number | undefined {
  if (state.step === 0) return undefined;
  return (state.elapsedS / state.step) * (state.totalSteps - state.step);
}

function timeText(state: ProgressState): string {
  if (state.step === state.totalSteps) return `done in ${formatDuration(state.elapsedS)}`;
  const eta = etaSeconds(state);
  return `${formatDuration(state.elapsedS)}, eta ${eta === undefined ? "?" : formatDuration(eta)}`;
}

interface Field {
  text: string;
  /** Higher is dropped first when the line is too narrow. */
  dropRank: number;
}

function optionalFields(state: ProgressState): Field[] {
  const fields: Field[] = [{ text: state.stage, dropRank: 1 }];
  if (state.reward !== undefined) fields.push({ text: `reward ${formatReward(state.reward)}`, dropRank: 2 });
  if (state.tokens !== undefined) {
    fields.push({ text: `${formatCount(state.tokens)} tok`, dropRank: 3 });
    if (state.elapsedS > 0) {
      fields.push({ text: `${formatCount(state.tokens / state.elapsedS)} tok/s`, dropRank: 4 });
    }
  }
  return fields;
}

const minBarWidth = 10;
const maxBarWidth = 30;

function bar(fraction: number, width: number): string {
  const inner = width - 2;
  const filled = Math.round(fraction * inner);
  return `[${"#".repeat(filled)}${"-".repeat(inner - filled)}]`;
}

/**
 * The progress as one line of at most `width` characters, e.g.
 * `step 12/100 [###-------------]  12% | gen | reward 0.532 | 1.23M tok | 4.10k tok/s | 1m23s, eta 10m05s`.
 * When narrow, the bar shrinks first, then the tokens rate, tokens, reward and stage go, then the
 * bar, then the eta; the step count and percentage stay as long as they fit.
 */
export function renderProgressLine(state: ProgressState, width: number): string {
  checkState(state);
  if (!Number.isInteger(width) || width < 1)
    throw new RangeError(`width: expected an integer ≥ 1, got ${width}`);
  const digits = String(state.totalSteps).length;
  const counter = `step ${String(state.step).padStart(digits)}/${state.totalSteps}`;
  const fraction = state.step / state.totalSteps;
  const percent = `${String(Math.floor(fraction * 100)).padStart(3)}%`;
  const time = timeText(state);
  const fields = optionalFields(state);
  const line = (kept: Field[], barWidth: number) => {
    const head = barWidth > 0 ? `${counter} ${bar(fraction, barWidth)} ${percent}` : `${counter} ${percent}`;
    return [head, ...kept.map((f) => f.text), time].join(" | ");
  };
  const dropOrder = [...fields].sort((a, b) => b.dropRank - a.dropRank);
  for (const withBar of [true, false]) {
    for (let dropped = 0; dropped <= dropOrder.length; dropped++) {
      const kept = fields.filter((f) => !dropOrder.slice(0, dropped).includes(f));
      if (!withBar) {
        const text = line(kept, 0);
        if (text.length <= width) return text;
        continue;
      }
      const room = width - line(kept, 0).length - 1;
      if (room >= minBarWidth) return line(kept, Math.min(room, maxBarWidth));
    }
  }
  // Very narrow: the count and percentage, then the elapsed time if it fits.
  const short = `${counter} ${percent}`;
  const withElapsed = `${short} | ${formatDuration(state.elapsedS)}`;
  return withElapsed.length <= width ? withElapsed : short.slice(0, width);
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The progress as a small HTML block (a bar and one line of figures), for a notebook. */
export function renderProgressHtml(state: ProgressState): string {
  checkState(state);
  const percent = (100 * state.step) / state.totalSteps;
  const figures = [
    escapeHtml(state.stage),
    ...optionalFields(state)
      .slice(1)
      .map((f) => escapeHtml(f.text)),
    escapeHtml(timeText(state)),
  ].join(" · ");
  return (
    '<div class="tiller-progress" style="font: 13px/1.5 system-ui, sans-serif; max-width: 720px">' +
    `<div><b>step ${state.step}/${state.totalSteps}</b> (${Math.floor(percent)}%)</div>` +
    '<div style="background: #e5e7eb; border-radius: 4px; height: 8px; overflow: hidden">' +
    `<div style="width: ${percent.toFixed(2)}%; height: 100%; background: #2563eb"></div></div>` +
    `<div style="color: #555">${figures}</div></div>`
  );
}

/** Where text goes: process.stderr, or anything with the same `write` (tests, log files). */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /**
   * "notebook": an HTML block updated in place (text lines when not in a tslab kernel); "tty": one
   * line rewritten with `\r`; "lines": one line per update. "auto" (the default) picks notebook in a
   * tslab kernel, else tty when the stream is a terminal, else lines.
   */
  mode?: "auto" | "notebook" | "tty" | "lines";
  /** Default: process.stderr, so that stdout stays for results. */
  stream?: ProgressStream;
  /** Line width for "lines" mode, and for "tty" when the stream does not know its columns (default 100). */
  width?: number;
}

/** Draws ProgressState updates; call `done()` when the run ends. */
export class Progress {
  readonly mode: "notebook" | "tty" | "lines";
  #stream: ProgressStream;
  #width: number;
  #live: LiveOutput | undefined;
  #lineOpen = false;

  constructor(options: ProgressOptions = {}) {
    this.#stream = options.stream ?? process.stderr;
    this.#width = options.width ?? 100;
    const mode = options.mode ?? "auto";
    if (mode !== "auto") this.mode = mode;
    else if (inNotebook()) this.mode = "notebook";
    else this.mode = this.#stream.isTTY ? "tty" : "lines";
    // Four updates a second at most in a notebook (every stage of every step would be more).
    if (this.mode === "notebook") this.#live = new LiveOutput(250);
  }

  update(state: ProgressState): void {
    // Outside a kernel, LiveOutput.show sends nothing and the text below is written instead.
    if (
      this.#live?.show({
        "text/html": renderProgressHtml(state),
        "text/plain": renderProgressLine(state, this.#width),
      })
    ) {
      return;
    }
    if (this.mode === "tty") {
      // One column short of the terminal width: a full-width line wraps on some terminals.
      const width = Math.max(1, (this.#stream.columns ?? this.#width + 1) - 1);
      this.#stream.write(`\r${renderProgressLine(state, width)}\x1b[K`);
      this.#lineOpen = true;
    } else {
      this.#stream.write(`${renderProgressLine(state, this.#width)}\n`);
    }
  }

  /** Sends the last update held back in a notebook; ends the `\r` line on a terminal. */
  done(): void {
    this.#live?.flush();
    if (this.#lineOpen) this.#stream.write("\n");
    this.#lineOpen = false;
  }
}
