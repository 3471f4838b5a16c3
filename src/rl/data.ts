// Prompt datasets in verl's layout: each row has `prompt` (chat messages), `data_source`,
// `reward_model: {ground_truth, style}` and `extra_info`, and for vision-language models an
// `images` column (encoded PNG/JPEG bytes; `<image>` in a message marks where each one goes, as in
// verl's multimodal datasets such as geo3k). Reads JSONL and Parquet; PromptDataset
// applies the caller's chat template, filters long prompts, and serves seeded, resumable batches.
//
// Parquet reader: hyparquet (pure JS, no dependencies, MIT, maintained by Hyperparam, actively
// released). It reads nested list<struct> and struct columns as plain JS arrays/objects, which is
// exactly verl's `prompt` and `reward_model` columns, and decodes snappy (pyarrow's default)
// without WASM. apache-arrow's JS package (already a dependency) reads Arrow IPC, not Parquet;
// parquet-wasm would add a large WASM binary for no gain at prompt-dataset sizes.
import { readFileSync } from "node:fs";
import { extname } from "node:path";
import { asyncBufferFromFile, parquetReadObjects } from "hyparquet";

export interface ChatMessage {
  role: string;
  content: string;
}

/** One prompt row, verl's columns in camelCase. `row` is the 0-based row number in its file. */
export interface PromptRow {
  prompt: ChatMessage[];
  dataSource: string;
  rewardModel: { groundTruth: string; style: string };
  extraInfo: Record<string, unknown>;
  /** Encoded images (PNG or JPEG), in the order of the `<image>` placeholders; absent: none. */
  images?: Uint8Array[];
  file: string;
  row: number;
}

/** Reads a .jsonl or .parquet file of verl-layout rows, validating each. */
export async function readPromptRows(file: string): Promise<PromptRow[]> {
  const ext = extname(file).toLowerCase();
  if (ext === ".jsonl" || ext === ".ndjson") return readJsonl(file);
  if (ext === ".parquet") return readParquet(file);
  throw new Error(`${file}: unknown prompt-file type "${ext}"; use .jsonl or .parquet`);
}

function readJsonl(file: string): PromptRow[] {
  const lines = readFileSync(file, "utf8").split("\n");
  const rows: PromptRow[] = [];
  for (const [i, line] of lines.entries()) {
    if (line.trim() === "") continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      // The parser's message quotes the line; a file's content is not echoed (docs/security.md).
      throw new Error(`${file}: line ${i + 1}: not valid JSON (${line.length} characters)`);
    }
    rows.push(toPromptRow(value, file, rows.length, `line ${i + 1}`));
  }
  return rows;
}

async function readParquet(file: string): Promise<PromptRow[]> {
  let raw: Record<string, unknown>[];
  try {
    // utf8: false keeps binary columns (verl's image bytes) as bytes; annotated strings stay strings.
    raw = await parquetReadObjects({ file: await asyncBufferFromFile(file), utf8: false });
  } catch (error) {
    throw new Error(
      `${file}: could not read Parquet (${(error as Error).message}). Snappy/uncompressed files are ` +
        "supported; rewrite others with pyarrow's compression='snappy'.",
    );
  }
  return raw.map((value, i) => toPromptRow(value, file, i, `row ${i}`));
}

/** Converts one raw row to a PromptRow; errors name the file, the row and the field. */
export function toPromptRow(value: unknown, file: string, row: number, where = `row ${row}`): PromptRow {
  const fail = (field: string, problem: string): never => {
    throw new Error(`${file}: ${where}: field "${field}" ${problem}`);
  };
  if (!isObject(value)) return fail("(row)", `must be an object, got ${describe(value)}`);
  const prompt = value.prompt;
  if (!Array.isArray(prompt) || prompt.length === 0)
    fail("prompt", `must be a non-empty list of {role, content}, got ${describe(prompt)}`);
  const messages = (prompt as unknown[]).map((m, j) => {
    if (!isObject(m)) return fail(`prompt[${j}]`, `must be {role, content}, got ${describe(m)}`);
    if (typeof m.role !== "string") fail(`prompt[${j}].role`, `must be a string, got ${describe(m.role)}`);
    if (typeof m.content !== "string")
      fail(`prompt[${j}].content`, `must be a string, got ${describe(m.content)}`);
    return { role: m.role as string, content: m.content as string };
  });
  if (typeof value.data_source !== "string")
    fail("data_source", `must be a string, got ${describe(value.data_source)}`);
  const rm = value.reward_model;
  if (!isObject(rm)) return fail("reward_model", `must be {ground_truth, style}, got ${describe(rm)}`);
  let groundTruth = rm.ground_truth;
  // Some datasets store numeric answers; verifiers compare strings, so numbers are stringified.
  if (typeof groundTruth === "number" || typeof groundTruth === "bigint") groundTruth = String(groundTruth);
  if (typeof groundTruth !== "string")
    fail("reward_model.ground_truth", `must be a string, got ${describe(groundTruth)}`);
  const style = rm.style ?? "rule";
  if (typeof style !== "string") fail("reward_model.style", `must be a string, got ${describe(style)}`);
  const extra = value.extra_info ?? {};
  if (!isObject(extra)) fail("extra_info", `must be an object, got ${describe(extra)}`);
  const images =
    value.images === undefined || value.images === null ? undefined : imageBytes(value.images, fail);
  return {
    prompt: messages,
    dataSource: value.data_source as string,
    rewardModel: { groundTruth: groundTruth as string, style: style as string },
    extraInfo: plain(extra) as Record<string, unknown>,
    ...(images && images.length > 0 ? { images } : {}),
    file,
    row,
  };
}

// verl's `images`: a list whose items are the bytes themselves or {bytes, path} (HF datasets'
// Image feature); JSONL files carry the bytes base64-encoded.
function imageBytes(value: unknown, fail: (field: string, problem: string) => never): Uint8Array[] {
  if (!Array.isArray(value))
    return fail("images", `must be a list of encoded images, got ${describe(value)}`);
  return value.map((item, i) => {
    const bytes = isObject(item) && !(item instanceof Uint8Array) ? item.bytes : item;
    if (bytes instanceof Uint8Array) return bytes;
    if (typeof bytes === "string") return new Uint8Array(Buffer.from(bytes, "base64"));
    return fail(`images[${i}]`, `must be encoded bytes or {bytes}, got ${describe(item)}`);
  });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === undefined) return "nothing (missing)";
  if (Array.isArray(v)) return `a list of ${v.length}`;
  if (typeof v === "bigint") return `${v}n`;
  const s = JSON.stringify(v);
  return s === undefined ? typeof v : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

// Parquet int64 arrives as BigInt; extra_info is handed to reward workers and notebooks, so safe
// integers become numbers (larger ones stay BigInt).
function plain(v: unknown): unknown {
  if (typeof v === "bigint")
    return v >= Number.MIN_SAFE_INTEGER && v <= Number.MAX_SAFE_INTEGER ? Number(v) : v;
  if (Array.isArray(v)) return v.map(plain);
  if (isObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

/**
 * Applies the chat template and tokenizes (e.g. via src/tokenizer's ChatTemplate + Tokenizer); the
 * row is there for what the messages do not hold (its images, whose placeholder counts matter).
 */
export type ChatTokenizeFn = (
  messages: ChatMessage[],
  row: PromptRow,
) => readonly number[] | Int32Array | Uint32Array;

export interface PromptDatasetOptions {
  applyChatTemplate: ChatTokenizeFn;
  /** Prompts with more tokens (after the template) are dropped and counted in `filteredOut`. */
  maxPromptTokens: number;
  /** Seed of the shuffle; each epoch uses its own permutation derived from it. Default 0. */
  seed?: number;
  /** Default true; false serves rows in file order every epoch. */
  shuffle?: boolean;
}

/** One prompt ready for rollout. */
export interface PromptItem {
  row: PromptRow;
  promptTokenIds: number[];
}

/** A resumable position: serve from `offset` in epoch `epoch`'s order. */
export interface PromptDatasetState {
  epoch: number;
  offset: number;
  seed: number;
  shuffle: boolean;
  size: number;
}

export class PromptDataset {
  readonly items: readonly PromptItem[];
  /** Prompts dropped for exceeding maxPromptTokens. */
  readonly filteredOut: number;
  readonly seed: number;
  readonly shuffle: boolean;
  private epoch = 0;
  private offset = 0;
  private order: number[];

  constructor(rows: readonly PromptRow[], options: PromptDatasetOptions) {
    this.seed = options.seed ?? 0;
    this.shuffle = options.shuffle ?? true;
    const kept: PromptItem[] = [];
    for (const row of rows) {
      let ids: number[];
      try {
        ids = Array.from(options.applyChatTemplate(row.prompt, row));
      } catch (error) {
        throw new Error(
          `${row.file}: row ${row.row}: field "prompt": chat template failed: ${(error as Error).message}`,
        );
      }
      if (ids.length <= options.maxPromptTokens) kept.push({ row, promptTokenIds: ids });
    }
    this.items = kept;
    this.filteredOut = rows.length - kept.length;
    if (rows.length === 0) throw new Error("PromptDataset: the training files hold no prompts");
    if (kept.length === 0) {
      throw new Error(
        `PromptDataset: all ${rows.length} prompts exceed maxPromptTokens=${options.maxPromptTokens}; raise it`,
      );
    }
    this.order = this.orderFor(0);
  }

  /** Reads the files (JSONL or Parquet, concatenated in order) and builds the dataset. */
  static async fromFiles(
    files: string | readonly string[],
    options: PromptDatasetOptions,
  ): Promise<PromptDataset> {
    const list = typeof files === "string" ? [files] : files;
    const rows = (await Promise.all(list.map(readPromptRows))).flat();
    return new PromptDataset(rows, options);
  }

  get size(): number {
    return this.items.length;
  }

  /** The epoch the next batch comes from. */
  get currentEpoch(): number {
    return this.epoch;
  }

  /**
   * The next `promptsPerStep` prompts. Like verl's train dataloader (drop_last=True), an epoch's
   * last partial batch is skipped and the next batch starts the next epoch's order.
   */
  nextBatch(promptsPerStep: number): PromptItem[] {
    if (!Number.isInteger(promptsPerStep) || promptsPerStep < 1 || promptsPerStep > this.size) {
      throw new Error(
        `nextBatch: promptsPerStep must be an integer in 1..${this.size}, got ${promptsPerStep}`,
      );
    }
    if (this.offset + promptsPerStep > this.size) {
      this.epoch++;
      this.offset = 0;
      this.order = this.orderFor(this.epoch);
    }
    const batch = this.order
      .slice(this.offset, this.offset + promptsPerStep)
      .map((i) => this.items[i] as PromptItem);
    this.offset += promptsPerStep;
    return batch;
  }

  /** Batches per epoch for a batch size (drop_last). */
  batchesPerEpoch(promptsPerStep: number): number {
    return Math.floor(this.size / promptsPerStep);
  }

  state(): PromptDatasetState {
    return {
      epoch: this.epoch,
      offset: this.offset,
      seed: this.seed,
      shuffle: this.shuffle,
      size: this.size,
    };
  }

  /** Resumes at a saved position; the dataset must be built the same way (same files, seed, filter). */
  restore(state: PromptDatasetState): void {
    if (state.seed !== this.seed || state.shuffle !== this.shuffle || state.size !== this.size) {
      throw new Error(
        `PromptDataset.restore: saved state is for seed=${state.seed} shuffle=${state.shuffle} size=${state.size}, ` +
          `this dataset has seed=${this.seed} shuffle=${this.shuffle} size=${this.size}; build it with the same files and options`,
      );
    }
    if (!(Number.isInteger(state.offset) && state.offset >= 0 && state.offset <= this.size)) {
      throw new Error(`PromptDataset.restore: offset ${state.offset} is outside 0..${this.size}`);
    }
    this.epoch = state.epoch;
    this.offset = state.offset;
    this.order = this.orderFor(state.epoch);
  }

  private orderFor(epoch: number): number[] {
    const order = Array.from({ length: this.size }, (_, i) => i);
    if (!this.shuffle) return order;
    const random = mulberry32(mixSeed(this.seed, epoch));
    // Fisher–Yates, from the end.
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j] as number, order[i] as number];
    }
    return order;
  }
}

/**
 * mulberry32 (Tommy Ettinger's 32-bit generator): state += 0x6D2B79F5, then two multiply-xorshift
 * rounds; returns floats in [0, 1). Small, fast, and fully specified here, so the order of a
 * (seed, epoch) is the same on every machine and Node version.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One 32-bit seed per (seed, epoch): the murmur3 finaliser over seed ⊕ epoch·golden-ratio. */
export function mixSeed(seed: number, epoch: number): number {
  let h = (seed ^ Math.imul(epoch + 1, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
