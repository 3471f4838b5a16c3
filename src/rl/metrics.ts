// The metrics log: one row per RL step, columns named as verl names them (`actor/pg_loss`,
// `critic/score/mean`, `timing_s/gen` …), kept as an Arrow table on disk so that pandas, polars
// and DuckDB read it as it is. Also the rule for reducing a metric across ranks and micro-batches.
import { readFile } from "node:fs/promises";
import {
  type Data,
  DataType,
  Field,
  Float64,
  Int32,
  makeData,
  RecordBatch,
  Schema,
  Struct,
  Table,
  tableFromIPC,
  tableToIPC,
} from "apache-arrow";
import { writeFileAtomic } from "../util/atomic-file.js";

/** One step's metrics as given to `append`: `step` plus any named values; `null` means "not logged". */
export type MetricsInput = { step: number } & Record<string, number | null | undefined>;

/** A stored row: `step` and the metrics logged at that step (a missing key was not logged). */
export type MetricsRow = Readonly<{ step: number } & Record<string, number>>;

/** Written into the Arrow schema's metadata so a reader can tell what the file is. */
const formatKey = "tiller.format";
const formatValue = "metrics-log/1";
const maxStep = 2 ** 31 - 1;

export class MetricsLog {
  #rows: MetricsRow[] = [];
  // Metric names (without `step`) in order of first appearance.
  #names: string[] = [];
  #nameSet = new Set<string>();
  #frozenRows: readonly MetricsRow[] | undefined;

  /** The rows, oldest first: a frozen snapshot (rows and array), taken again after a change. */
  get rows(): readonly MetricsRow[] {
    this.#frozenRows ??= Object.freeze(this.#rows.slice());
    return this.#frozenRows;
  }

  get length(): number {
    return this.#rows.length;
  }

  /**
   * Adds one step. `step` must be an integer in [0, 2³¹) above the last row's; values must be
   * numbers (NaN and ±Infinity are kept as they are: an infinite grad norm is worth seeing) or
   * null/undefined for "not logged at this step". Keys not seen before become new columns.
   */
  append(input: MetricsInput): void {
    const step = input.step;
    if (typeof step !== "number" || !Number.isInteger(step) || step < 0 || step > maxStep) {
      throw new RangeError(`metrics.step: expected an integer in [0, ${maxStep}], got ${describe(step)}`);
    }
    const last = this.#rows.at(-1);
    if (last && step <= last.step) {
      throw new RangeError(
        `metrics.step: steps must increase; got step ${step} after step ${last.step}` +
          " (call truncate(step) first to rewind)",
      );
    }
    const row: Record<string, number> = { step };
    for (const [name, value] of Object.entries(input)) {
      if (name === "step" || value === null || value === undefined) continue;
      if (typeof value !== "number") {
        throw new TypeError(`metrics["${name}"] at step ${step}: expected a number, got ${describe(value)}`);
      }
      if (name === "") throw new RangeError(`metrics at step ${step}: a metric name must not be empty`);
      row[name] = value;
    }
    for (const name of Object.keys(row)) {
      if (name !== "step" && !this.#nameSet.has(name)) {
        this.#nameSet.add(name);
        this.#names.push(name);
      }
    }
    this.#rows.push(Object.freeze(row) as MetricsRow);
    this.#frozenRows = undefined;
  }

  /** `step`, then each metric in order of first appearance. */
  columns(): string[] {
    return ["step", ...this.#names];
  }

  /** The latest row, or undefined when the log is empty. */
  last(): MetricsRow | undefined {
    return this.#rows.at(-1);
  }

  /** One column as numbers, one per row; NaN where the metric was not logged. */
  column(name: string): Float64Array | undefined {
    if (name !== "step" && !this.#nameSet.has(name)) return undefined;
    const out = new Float64Array(this.#rows.length);
    this.#rows.forEach((row, i) => {
      out[i] = row[name] ?? Number.NaN;
    });
    return out;
  }

  /**
   * Keeps the rows with `row.step <= step` (to resume or rewind a run). Columns that no remaining
   * row has are dropped, so the log equals the one that was there when that step was appended.
   */
  truncate(step: number): void {
    if (typeof step !== "number" || Number.isNaN(step)) {
      throw new RangeError(`truncate(step): expected a number, got ${describe(step)}`);
    }
    const kept = this.#rows.filter((row) => row.step <= step);
    this.#rows = [];
    this.#names = [];
    this.#nameSet.clear();
    this.#frozenRows = undefined;
    for (const row of kept) this.append(row);
  }

  /** The log as an Arrow table: `step` (Int32, never null), then one Float64 column per metric, null where not logged. */
  table(): Table {
    const length = this.#rows.length;
    const fields: Field[] = [new Field("step", new Int32(), false)];
    const children: Data[] = [
      makeData({ type: new Int32(), length, data: Int32Array.from(this.#rows, (row) => row.step) }),
    ];
    for (const name of this.#names) {
      const values = new Float64Array(length);
      const validity = new Uint8Array(Math.ceil(length / 8));
      let nullCount = 0;
      this.#rows.forEach((row, i) => {
        const value = row[name];
        if (value === undefined) {
          nullCount++;
        } else {
          values[i] = value;
          validity[i >> 3] |= 1 << (i & 7);
        }
      });
      fields.push(new Field(name, new Float64(), true));
      children.push(
        makeData({
          type: new Float64(),
          length,
          nullCount,
          data: values,
          nullBitmap: nullCount > 0 ? validity : undefined,
        }),
      );
    }
    const schema = new Schema(fields, new Map([[formatKey, formatValue]]));
    const struct = makeData({ type: new Struct(fields), length, nullCount: 0, children });
    return new Table([new RecordBatch(schema, struct)]);
  }

  /**
   * Rebuilds a log from a table with an integer `step` column and numeric metric columns (as
   * written by `table()`, or by pandas/polars/DuckDB: Int64 and Float32 columns are accepted).
   * Nulls become "not logged"; a column that is null in every row is left out, as `append`
   * never makes one.
   */
  static fromTable(table: Table): MetricsLog {
    const stepColumn = table.getChild("step");
    if (!stepColumn) {
      const names = table.schema.fields.map((f) => f.name).join(", ");
      throw new RangeError(`metrics table: no "step" column (columns: ${names || "none"})`);
    }
    if (!DataType.isInt(stepColumn.type)) {
      throw new TypeError(`metrics table: column "step" must be integer, not ${stepColumn.type}`);
    }
    const metricColumns = table.schema.fields
      .filter((field) => field.name !== "step")
      .map((field) => {
        if (!DataType.isInt(field.type) && !DataType.isFloat(field.type)) {
          throw new TypeError(`metrics table: column "${field.name}" must be numeric, not ${field.type}`);
        }
        return { name: field.name, vector: table.getChild(field.name) as NonNullable<typeof stepColumn> };
      });
    const log = new MetricsLog();
    for (let i = 0; i < table.numRows; i++) {
      const step = stepColumn.get(i);
      if (step === null) throw new RangeError(`metrics table: "step" is null in row ${i}`);
      const row: MetricsInput = { step: Number(step) };
      for (const { name, vector } of metricColumns) {
        const value = vector.get(i);
        if (value !== null) row[name] = Number(value);
      }
      log.append(row);
    }
    return log;
  }

  /** Writes the log as an Arrow IPC file (`.arrow`), atomically: a crash leaves the old file. */
  async writeFile(path: string): Promise<void> {
    await writeFileAtomic(path, tableToIPC(this.table(), "file"));
  }

  /** Reads a file written by `writeFile` (or any Arrow IPC file with a `step` column). */
  static async readFile(path: string): Promise<MetricsLog> {
    const bytes = await readFile(path);
    // tableFromIPC turns bytes that are not Arrow into an empty table; check the file magic.
    if (bytes.byteLength < 12 || bytes.subarray(0, 6).toString("latin1") !== "ARROW1") {
      throw new RangeError(`${path}: not an Arrow IPC file (it should start with "ARROW1")`);
    }
    return MetricsLog.fromTable(tableFromIPC(bytes));
  }
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n (a bigint; pass a number)`;
  return String(value);
}

/** How a metric combines across ranks or micro-batches. */
export type Reduction = "mean" | "sum" | "max" | "min";

/**
 * The reduction a metric name implies, unless `how` names it: the last path segment decides —
 * `max`, `max_…` or `…_max` reduce by max (`response_length/max`, `perf/max_memory_allocated_gb`,
 * `training/rollout_probs_diff_max`); the same with `min` by min; `sum`, `sum_…`, `…_sum`,
 * `count`, `…_count`, `num_…` and `total_…` (`perf/total_num_tokens`) by sum; everything else by
 * mean, as verl's reduce_metrics does.
 */
export function reductionFor(name: string, how: Readonly<Record<string, Reduction>> = {}): Reduction {
  const declared = how[name];
  if (declared !== undefined) {
    if (!reductions.has(declared)) {
      throw new RangeError(
        `how["${name}"]: expected one of ${[...reductions].join(", ")}, got ${describe(declared)}`,
      );
    }
    return declared;
  }
  const segment = name.slice(name.lastIndexOf("/") + 1);
  const has = (word: string) =>
    segment === word || segment.startsWith(`${word}_`) || segment.endsWith(`_${word}`);
  if (has("max")) return "max";
  if (has("min")) return "min";
  if (has("sum") || has("count") || segment.startsWith("num_") || segment.startsWith("total_")) return "sum";
  return "mean";
}

const reductions = new Set<Reduction>(["mean", "sum", "max", "min"]);

/**
 * Combines per-rank (or per-micro-batch) metric records into one, each metric by `reductionFor`.
 * A metric missing from some records is reduced over those that have it; NaN propagates, so one
 * rank's NaN loss is seen. The mean is unweighted, like verl's.
 */
export function reduceMetrics(
  values: readonly Readonly<Record<string, number>>[],
  how: Readonly<Record<string, Reduction>> = {},
): Record<string, number> {
  const gathered = new Map<string, number[]>();
  values.forEach((record, i) => {
    for (const [name, value] of Object.entries(record)) {
      if (typeof value !== "number") {
        throw new TypeError(`values[${i}]["${name}"]: expected a number, got ${describe(value)}`);
      }
      const list = gathered.get(name);
      if (list) list.push(value);
      else gathered.set(name, [value]);
    }
  });
  const out: Record<string, number> = {};
  for (const [name, list] of gathered) {
    switch (reductionFor(name, how)) {
      case "mean":
        out[name] = list.reduce((a, b) => a + b, 0) / list.length;
        break;
      case "sum":
        out[name] = list.reduce((a, b) => a + b, 0);
        break;
      case "max":
        out[name] = list.reduce((a, b) => Math.max(a, b));
        break;
      case "min":
        out[name] = list.reduce((a, b) => Math.min(a, b));
        break;
    }
  }
  return out;
}
