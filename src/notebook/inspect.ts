// The rollout inspector: a step's rollouts table as one self-contained, interactive HTML view
// (groups side by side, tokens coloured by advantage / logprob / entropy / ratio, sort, filters,
// search). The data is embedded once as JSON and the DOM is built by a small inlined script
// (inspector-view.ts), so a large table stays a reasonable page and nothing is fetched.
import { randomBytes } from "node:crypto";
import { inspect as utilInspect } from "node:util";
import type { Table, Vector } from "apache-arrow";
import type { Tokenizer } from "../tokenizer/tokenizer.js";
import { writeFileAtomic } from "../util/atomic-file.js";
import { showBundle } from "./display.js";
import { inspectorCss, inspectorScript } from "./inspector-view.js";

/** What the tokens are coloured by; `ratio` is π_old / π_rollout = exp(old − rollout logprob). */
export const colorByChoices = ["advantage", "logprob", "entropy", "ratio"] as const;
export type ColorBy = (typeof colorByChoices)[number];

export interface InspectOptions {
  /** Renders each token's text; without one, the `response` text is shown beside per-token colours. */
  tokenizer?: Tokenizer;
  /** The heading; by default "rollouts of step N". */
  title?: string;
  /** The colouring shown first (default "advantage"; the first one with values if it has none). */
  colorBy?: ColorBy;
  /** Group cards per page (default 12): the page holds the DOM of these only. */
  groupsPerPage?: number;
}

/** One group (uid) as the view gets it. */
export interface InspectorGroup {
  uid: string;
  prompt?: string;
  /** The prompt's images as data: URLs (PNG / JPEG only), when it has any. */
  images?: string[];
  truth?: string;
  source?: string;
  step?: number;
}

/**
 * One response as the view gets it. Per-token arrays are rounded (logprob, entropy, advantage to
 * 3 decimals; ln ratio to 4 significant digits) and hold null where a value is missing or not finite.
 */
export interface InspectorResponse {
  /** Index into `groups`. */
  g: number;
  /** Row of the table. */
  row: number;
  text?: string;
  ids: number[];
  /** Pieces that differ from `vocab[id]` here: [token index, text]. */
  px?: [number, string][];
  /** Rollout logprob per token (old logprob where the rollout's is missing). */
  lp?: (number | null)[];
  /** ln ratio per token: old − rollout logprob. */
  d?: (number | null)[];
  ent?: (number | null)[];
  /** Advantage per token, or one number when all tokens share it (GRPO). */
  adv?: number | (number | null)[];
  advantage?: number;
  reward?: number;
  score?: number;
  acc?: number;
  pred?: string;
  finish?: string;
  len?: number;
  status?: string;
  round?: number;
  /** Where the padding token first appears inside the response (never a real sample's place). */
  padAt?: number;
}

/** Everything the page's script reads: embedded once as JSON. */
export interface InspectorData {
  title: string;
  colorBy: ColorBy;
  groupsPerPage: number;
  /** Token id → its text, when a tokenizer was given; null otherwise. */
  vocab: Record<number, string> | null;
  groups: InspectorGroup[];
  responses: InspectorResponse[];
}

const defaultGroupsPerPage = 12;

function checkOptions(table: Table, options: InspectOptions): void {
  if (typeof (table as { getChild?: unknown })?.getChild !== "function") {
    throw new TypeError("inspect: expected an Arrow Table of rollouts (as exp.rollouts() returns)");
  }
  if (options.colorBy !== undefined && !colorByChoices.includes(options.colorBy)) {
    throw new RangeError(
      `options.colorBy: expected one of ${colorByChoices.join(", ")}; got ${JSON.stringify(options.colorBy)}`,
    );
  }
  const perPage = options.groupsPerPage;
  if (perPage !== undefined && !(Number.isInteger(perPage) && perPage >= 1)) {
    throw new RangeError(`options.groupsPerPage: expected an integer ≥ 1, got ${perPage}`);
  }
}

// Column readers: a missing column and a null cell both read as undefined.
type Column = Vector | null;

function stringAt(column: Column, row: number): string | undefined {
  const value = column?.get(row);
  return value === null || value === undefined ? undefined : String(value);
}

function numberAt(column: Column, row: number): number | undefined {
  const value = column?.get(row);
  if (value === null || value === undefined) return undefined;
  const n = Number(value);
  return Number.isFinite(n) ? n : undefined;
}

function listAt(column: Column, row: number): number[] | undefined {
  const value = column?.get(row) as { toArray(): ArrayLike<number | bigint> } | null | undefined;
  if (value === null || value === undefined) return undefined;
  return Array.from(value.toArray(), Number);
}

// Image cells are data: URLs of PNG / JPEG bytes; anything else is left out, so nothing but an
// embedded picture can reach the page's <img> elements.
const imageUrl = /^data:image\/(png|jpeg);base64,[A-Za-z0-9+/]+=*$/;

function imagesAt(column: Column, row: number): string[] | undefined {
  const value = column?.get(row) as { toArray(): ArrayLike<unknown> } | null | undefined;
  if (value === null || value === undefined) return undefined;
  const urls = Array.from(value.toArray(), String).filter((u) => imageUrl.test(u));
  return urls.length > 0 ? urls : undefined;
}

const fixed3 = (v: number) => (Number.isFinite(v) ? Math.round(v * 1000) / 1000 : null);
const significant4 = (v: number) => (Number.isFinite(v) ? Number(v.toPrecision(4)) : null);

/** The per-token values, ln ratios and texts the view needs of one row. */
function tokenValues(columns: Record<string, Column>, row: number) {
  const rollout = listAt(columns.rollout_logprobs ?? null, row);
  const old = listAt(columns.old_logprobs ?? null, row);
  const diff = listAt(columns.logprob_diff ?? null, row);
  const logprobs = rollout ?? old;
  // ln(π_old / π_rollout): from both logprobs when there are both, else from rollout − old.
  const lnRatio = rollout && old ? rollout.map((v, t) => (old[t] ?? Number.NaN) - v) : diff?.map((v) => -v);
  const advantages = listAt(columns.advantages ?? null, row)?.map(fixed3);
  const first = advantages?.[0];
  const constant = first !== undefined && advantages?.every((v) => v === first);
  return {
    lp: logprobs?.map(fixed3),
    d: lnRatio?.map(significant4),
    ent: listAt(columns.entropy ?? null, row)?.map(fixed3),
    adv: constant ? (first ?? undefined) : advantages,
  };
}

/** The view's data from a rollouts table (see `rolloutsTable`); absent columns read as nulls. */
export function inspectorData(table: Table, options: InspectOptions = {}): InspectorData {
  checkOptions(table, options);
  const names = [
    "step",
    "uid",
    "round",
    "prompt",
    "response",
    "prompt_tokens",
    "response_tokens",
    "rollout_logprobs",
    "old_logprobs",
    "logprob_diff",
    "entropy",
    "advantages",
    "advantage",
    "score",
    "reward",
    "acc",
    "pred",
    "response_length",
    "finish_reason",
    "data_source",
    "ground_truth",
    "reward_status",
    "images",
  ];
  const c: Record<string, Column> = Object.fromEntries(names.map((n) => [n, table.getChild(n)]));
  const { tokenizer } = options;
  const vocab: Record<number, string> | null = tokenizer ? {} : null;
  const groups: InspectorGroup[] = [];
  const groupOf = new Map<string, number>();
  const responses: InspectorResponse[] = [];
  const steps = new Set<number>();
  for (let row = 0; row < table.numRows; row++) {
    const uid = stringAt(c.uid ?? null, row) ?? `row ${row}`;
    const step = numberAt(c.step ?? null, row);
    if (step !== undefined) steps.add(step);
    let g = groupOf.get(uid);
    if (g === undefined) {
      g = groups.length;
      groupOf.set(uid, g);
      const promptIds = listAt(c.prompt_tokens ?? null, row);
      const prompt =
        stringAt(c.prompt ?? null, row) ??
        (promptIds && tokenizer ? tokenizer.decode(promptIds) : promptIds?.map((id) => `⟨${id}⟩`).join(""));
      const images = imagesAt(c.images ?? null, row);
      groups.push({
        uid,
        prompt,
        ...(images ? { images } : {}),
        truth: stringAt(c.ground_truth ?? null, row),
        source: stringAt(c.data_source ?? null, row),
        step,
      });
    }
    const ids = listAt(c.response_tokens ?? null, row) ?? [];
    const response: InspectorResponse = {
      g,
      row,
      text: stringAt(c.response ?? null, row),
      ids,
      ...tokenValues(c, row),
      advantage: numberAt(c.advantage ?? null, row),
      reward: numberAt(c.reward ?? null, row),
      score: numberAt(c.score ?? null, row),
      acc: numberAt(c.acc ?? null, row),
      pred: stringAt(c.pred ?? null, row),
      finish: stringAt(c.finish_reason ?? null, row),
      len: numberAt(c.response_length ?? null, row),
      status: stringAt(c.reward_status ?? null, row),
      round: numberAt(c.round ?? null, row),
    };
    // Responses are stored at their own length, so a padding token in one was sampled (unless the
    // tokenizer uses it as an end-of-sequence token too). Rollouts stop at a sampled pad, as at an
    // eos; one before the last token is flagged (a table from a run that did not stop there).
    const pad = tokenizer?.padTokenId ?? null;
    const padAt = pad === null || tokenizer?.eosTokenIds.includes(pad) ? -1 : ids.indexOf(pad);
    if (padAt >= 0 && padAt < ids.length - 1) response.padAt = padAt;
    if (tokenizer && vocab && ids.length > 0) {
      const px: [number, string][] = [];
      tokenizer.tokenPieces(ids).forEach((piece, t) => {
        const id = ids[t] as number;
        const known = vocab[id];
        if (known === undefined) vocab[id] = piece;
        else if (known !== piece) px.push([t, piece]);
      });
      if (px.length > 0) response.px = px;
    }
    responses.push(response);
  }
  const stepList = [...steps].sort((a, b) => a - b);
  const defaultTitle =
    stepList.length === 0
      ? "rollouts"
      : stepList.length === 1
        ? `rollouts of step ${stepList[0]}`
        : `rollouts of steps ${stepList[0]}–${stepList[stepList.length - 1]}`;
  return {
    title: options.title ?? defaultTitle,
    colorBy: options.colorBy ?? "advantage",
    groupsPerPage: options.groupsPerPage ?? defaultGroupsPerPage,
    vocab,
    groups,
    responses,
  };
}

/** JSON that can sit inside a <script> element: `<` escaped, so no `</script` or `<!--` appears. */
function scriptSafeJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, "\\u003c");
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

/** The view as an HTML fragment (root <div>, styles, data, script), for a notebook output. */
function inspectorFragment(data: InspectorData): string {
  const id = `tiller-inspector-${randomBytes(6).toString("hex")}`;
  return [
    `<div class="tiller-inspector" id="${id}" data-testid="inspector">` +
      `<p>${escapeHtml(data.title)}: the rollout inspector needs JavaScript.</p></div>`,
    `<style>${inspectorCss}</style>`,
    `<script type="application/json" id="${id}-data">${scriptSafeJson(data)}</script>`,
    "<script>(function () {\n" +
      `  var root = document.getElementById("${id}");\n` +
      `  var data = JSON.parse(document.getElementById("${id}-data").textContent);\n` +
      "  try {\n" +
      `    (${inspectorScript})(root, data);\n` +
      "  } catch (error) {\n" +
      '    root.textContent = "the rollout inspector failed: " + error;\n' +
      "    throw error;\n" +
      "  }\n" +
      "})();</script>",
  ].join("\n");
}

/** The inspector as one self-contained HTML page (no network needed), for a file. */
export function inspectorHtml(table: Table, options: InspectOptions = {}): string {
  const data = inspectorData(table, options);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(data.title)}</title>
</head>
<body style="margin: 16px; background: #fafbfc">
${inspectorFragment(data)}
</body>
</html>
`;
}

/** Writes `inspectorHtml` to `file`, atomically. */
export async function writeInspector(
  file: string,
  table: Table,
  options: InspectOptions = {},
): Promise<void> {
  await writeFileAtomic(file, inspectorHtml(table, options));
}

/** A rollout view ready to show: the HTML fragment and what it holds. */
export class Inspector {
  constructor(
    readonly html: string,
    readonly responses: number,
    readonly groups: number,
  ) {}

  /** Shows it as an output of the running cell; false (nothing shown) outside a notebook. */
  show(): boolean {
    return showBundle({ "text/html": this.html, "text/plain": this.toString() });
  }

  /** A one-line description: how many responses in how many groups. */
  toString(): string {
    return `Inspector(${this.responses} responses in ${this.groups} groups)`;
  }

  [utilInspect.custom](): string {
    return this.toString();
  }
}

/** Builds the rollout view of a table without showing it (see `inspect`). */
export function inspector(rollouts: Table, options: InspectOptions = {}): Inspector {
  const data = inspectorData(rollouts, options);
  return new Inspector(inspectorFragment(data), data.responses.length, data.groups.length);
}

/**
 * Shows a rollouts table (`exp.rollouts()`) as an interactive view in a tslab notebook: one card
 * per group, tokens coloured by advantage, logprob, entropy or ratio, with sort, filters and search.
 * It returns nothing, so a cell ending with it shows the view and no text line; `inspector(...)`
 * builds the HTML (outside a notebook too).
 */
export function inspect(rollouts: Table, options: InspectOptions = {}): void {
  inspector(rollouts, options).show();
}
