// Views of a run beyond single metrics: tables, stacked stage timings with throughput and memory,
// distributions of rewards and lengths (per step and over steps), evaluation metrics per data
// source, runs and branches overlaid, and two steps' rollouts side by side. Each has a `…Spec`
// (or `…Html`) that builds it and a function that shows it in a notebook and returns nothing.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { type Table, tableFromIPC } from "apache-arrow";
import type { Cluster } from "../client/client.js";
import { MetricsLog } from "../rl/metrics.js";
import { showBundle } from "./display.js";
import { type InspectOptions, inspector } from "./inspect.js";
import {
  Chart,
  type ChartKeys,
  chartSpec,
  columnOf,
  type MetricsSource,
  type PlotlySpec,
  type PlotlyTrace,
  wrapLabel,
} from "./plot.js";

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function formatCell(value: unknown): string {
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Number.isFinite(value) ? String(Number(value.toPrecision(4))) : String(value);
  }
  if (value === null || value === undefined) return "—";
  return String(value);
}

// ---- tables --------------------------------------------------------------------------------------

export type TableRows = readonly Readonly<Record<string, unknown>>[];

/** Rows (objects with the same keys, or an Arrow table's first `maxRows`) as an HTML table. */
export function tableHtml(
  rows: TableRows | Table,
  options: { title?: string; maxRows?: number } = {},
): string {
  const maxRows = options.maxRows ?? 50;
  const list: Record<string, unknown>[] = Array.isArray(rows)
    ? [...(rows as TableRows)]
    : (rows as Table)
        .toArray()
        .slice(0, maxRows)
        .map((r: { toJSON(): Record<string, unknown> }) => r.toJSON());
  const columns = [...new Set(list.flatMap((r) => Object.keys(r)))];
  const head = columns.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
  const body = list
    .slice(0, maxRows)
    .map((r) => {
      const cells = columns.map((c) => {
        const v = r[c];
        const numeric = typeof v === "number";
        return `<td${numeric ? ' class="num"' : ""}>${escapeHtml(formatCell(v))}</td>`;
      });
      return `<tr>${cells.join("")}</tr>`;
    })
    .join("\n");
  const more =
    list.length > maxRows ? `<caption class="more">first ${maxRows} of ${list.length} rows</caption>` : "";
  return (
    `<table class="tiller-table" data-testid="table">${options.title ? `<caption>${escapeHtml(options.title)}</caption>` : ""}${more}` +
    `<thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>` +
    "<style>.tiller-table{border-collapse:collapse;font:13px system-ui,sans-serif;margin:4px 0}" +
    ".tiller-table th,.tiller-table td{border-bottom:1px solid #ddd;padding:2px 10px;text-align:left}" +
    ".tiller-table td.num{text-align:right;font-variant-numeric:tabular-nums}" +
    ".tiller-table caption{text-align:left;font-weight:600;padding:2px 0}</style>"
  );
}

/** Shows rows as a table in the notebook (nothing outside one). */
export function table(rows: TableRows | Table, options: { title?: string; maxRows?: number } = {}): void {
  const list = Array.isArray(rows) ? rows : undefined;
  showBundle({
    "text/html": tableHtml(rows, options),
    "text/plain": list
      ? list.map((r) => Object.values(r).map(formatCell).join("\t")).join("\n")
      : String(rows),
  });
}

// ---- timings, throughput, memory -----------------------------------------------------------------

/** verl's stage timings in the order a step runs them (timing_s/step is their sum and more). */
const stageTimings = [
  "timing_s/gen",
  "timing_s/reward",
  "timing_s/filter",
  "timing_s/old_log_prob",
  "timing_s/ref",
  "timing_s/adv",
  "timing_s/update_actor",
  "timing_s/update_weights",
];

function columns(source: MetricsSource): string[] {
  return source instanceof MetricsLog ? source.columns() : source.schema.fields.map((f) => f.name);
}

/**
 * Stage timings per step as stacked bars (where each step's time goes), then throughput, MFU and
 * memory per rank (`perf/memory/*`) when the table has them.
 */
export function timingSpec(metrics: MetricsSource, options: { title?: string } = {}): PlotlySpec {
  const names = columns(metrics);
  const stages = stageTimings.filter((n) => names.includes(n));
  if (stages.length === 0) {
    throw new RangeError(`timingSpec: no timing_s/<stage> columns; the columns are: ${names.join(", ")}`);
  }
  const rest: string[][] = [];
  if (names.includes("perf/throughput")) rest.push(["perf/throughput"]);
  if (names.includes("perf/mfu/actor")) rest.push(["perf/mfu/actor"]);
  const memory = names.filter((n) => n.startsWith("perf/memory/") || n.startsWith("perf/max_memory"));
  if (memory.length > 0) rest.push(memory);
  // The line panels come from chartSpec; the first panel is replaced by the stacked bars.
  const spec = chartSpec(metrics, [stages.slice(0, 1), ...rest], {
    title: options.title ?? "where a step's time goes",
  });
  const steps = columnOf(metrics, "step") as Float64Array;
  const bars: PlotlyTrace[] = stages.map((name) => {
    const values = columnOf(metrics, name) as Float64Array;
    const x: number[] = [];
    const y: number[] = [];
    values.forEach((v, i) => {
      if (Number.isFinite(v)) {
        x.push(steps[i] as number);
        y.push(v);
      }
    });
    return {
      type: "bar",
      name: name.slice("timing_s/".length),
      x,
      y,
      xaxis: "x",
      yaxis: "y",
      showlegend: true,
      legend: "legend",
      hovertemplate: `${name}<br>step %{x}: %{y:.4~g} s<extra></extra>`,
    };
  });
  const layout = spec.layout as Record<string, Record<string, unknown>>;
  const yaxis = layout.yaxis as Record<string, unknown>;
  yaxis.title = { text: "seconds per stage", font: { size: 12 } };
  delete yaxis.range;
  const top = (yaxis.domain as number[])[1] as number;
  layout.legend = { orientation: "h", x: 1, xanchor: "right", y: top, yanchor: "bottom", font: { size: 11 } };
  const annotations = (spec.layout.annotations as Record<string, unknown>[]) ?? [];
  if (annotations[0]) annotations[0].text = "stage timings (stacked)";
  return {
    data: [...bars, ...spec.data.filter((t) => t.xaxis !== "x")],
    layout: { ...spec.layout, barmode: "stack", showlegend: true, bargap: 0.15 },
    config: spec.config,
  };
}

/** Shows `timingSpec` in the notebook. */
export function timings(metrics: MetricsSource, options: { title?: string } = {}): void {
  new Chart(timingSpec(metrics, options)).show();
}

// ---- distributions -------------------------------------------------------------------------------

/** Per step, the values of one rollouts column (score, response_length …), e.g. `exp.distributions()`. */
export type StepValues = ReadonlyMap<number, ArrayLike<number>> | Table;

function stepValues(source: StepValues | Table[], column: string): Map<number, number[]> {
  const out = new Map<number, number[]>();
  const addTable = (t: Table) => {
    const steps = columnOf(t, "step");
    const values = columnOf(t, column);
    if (!steps || !values) {
      const names = t.schema.fields.map((f) => f.name).join(", ");
      throw new RangeError(`distributions: the table needs "step" and "${column}" columns; it has: ${names}`);
    }
    values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      const s = steps[i] as number;
      out.set(s, [...(out.get(s) ?? []), v]);
    });
  };
  if (Array.isArray(source)) for (const t of source) addTable(t);
  else if (source instanceof Map) for (const [s, v] of source) out.set(s, Array.from(v as ArrayLike<number>));
  else addTable(source as Table);
  return new Map([...out].sort((a, b) => a[0] - b[0]));
}

/** Bin edges over [min, max]: integers get one bin each (up to 60), others `bins` equal bins. */
function binsOf(values: number[], bins: number): { lo: number; width: number; count: number } {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (values.every(Number.isInteger) && hi - lo + 1 <= 60)
    return { lo: lo - 0.5, width: 1, count: hi - lo + 1 };
  if (hi === lo) {
    lo -= 0.5;
    hi += 0.5;
  }
  return { lo, width: (hi - lo) / bins, count: bins };
}

/**
 * The distribution of a rollouts column (default "score"; "response_length" …) at the last step
 * as a histogram and, when there are several steps, over the steps as a heatmap (a column per
 * step, counts coloured). Takes a rollouts table (or several), or `exp.distributions(column)`.
 */
export function distributionSpec(
  source: StepValues | Table[],
  column = "score",
  options: { bins?: number; title?: string } = {},
): PlotlySpec {
  const bins = options.bins ?? 20;
  if (!(Number.isInteger(bins) && bins >= 1))
    throw new RangeError(`options.bins: ${bins} must be an integer ≥ 1`);
  const byStep = stepValues(source, column);
  if (byStep.size === 0) throw new RangeError(`distributions: no finite "${column}" values`);
  const all = [...byStep.values()].flat();
  const b = binsOf(all, bins);
  const centres = Array.from({ length: b.count }, (_, k) =>
    Number((b.lo + (k + 0.5) * b.width).toPrecision(6)),
  );
  const countsOf = (values: number[]) => {
    const counts = new Array<number>(b.count).fill(0);
    for (const v of values) {
      const k = Math.min(Math.max(Math.floor((v - b.lo) / b.width), 0), b.count - 1);
      counts[k] = (counts[k] as number) + 1;
    }
    return counts;
  };
  const steps = [...byStep.keys()];
  const lastStep = steps[steps.length - 1] as number;
  const last = byStep.get(lastStep) as number[];
  const data: PlotlyTrace[] = [
    {
      type: "bar",
      name: `step ${lastStep}`,
      x: centres,
      y: countsOf(last),
      xaxis: "x",
      yaxis: "y",
      showlegend: false,
      width: b.width * 0.95,
      hovertemplate: `${column} ≈ %{x}: %{y} responses<extra>step ${lastStep}</extra>`,
    },
  ];
  const several = steps.length > 1;
  const histogramDomain: [number, number] = several ? [0.62, 1] : [0, 1];
  const layout: Record<string, unknown> = {
    title: { text: wrapLabel(options.title ?? `${column}: distribution`, 70), font: { size: 15 } },
    height: several ? 640 : 340,
    margin: { t: 60, b: 50, l: 80, r: 30 },
    xaxis: { title: { text: column }, anchor: "y", exponentformat: "power" },
    yaxis: {
      title: { text: `responses, step ${lastStep}`, font: { size: 12 } },
      domain: histogramDomain,
      anchor: "x",
      rangemode: "tozero",
      tickformat: "d",
    },
    bargap: 0.05,
  };
  if (several) {
    // A heatmap drawn as square markers coloured by count (plotly's basic bundle has no heatmap
    // trace): one column per step, one row per bin; empty cells are left out.
    const x: number[] = [];
    const y: number[] = [];
    const counts: number[] = [];
    for (const s of steps) {
      countsOf(byStep.get(s) as number[]).forEach((n, k) => {
        if (n === 0) return;
        x.push(s);
        y.push(centres[k] as number);
        counts.push(n);
      });
    }
    const cellPx = Math.max(3, Math.min(28, Math.floor(Math.min(900 / steps.length, 260 / b.count))));
    data.push({
      type: "scatter",
      mode: "markers",
      name: `${column} over steps`,
      x,
      y,
      xaxis: "x2",
      yaxis: "y2",
      showlegend: false,
      marker: {
        symbol: "square",
        size: cellPx,
        color: counts,
        colorscale: "Viridis",
        showscale: true,
        colorbar: { title: { text: "responses" }, len: 0.45, y: 0.24 },
      },
      hovertemplate: `step %{x}, ${column} ≈ %{y}: %{marker.color} responses<extra></extra>`,
    });
    Object.assign(layout, {
      xaxis2: {
        title: { text: "step" },
        anchor: "y2",
        tickformat: "d",
        ...(steps.length < 10 ? { dtick: 1 } : {}),
      },
      yaxis2: {
        title: { text: column, font: { size: 12 } },
        domain: [0, 0.48],
        anchor: "x2",
        exponentformat: "power",
      },
    });
  }
  return { data, layout, config: { responsive: true, displaylogo: false, showSendToCloud: false } };
}

/** Shows `distributionSpec` in the notebook. */
export function distributions(
  source: StepValues | Table[],
  column = "score",
  options: { bins?: number; title?: string } = {},
): void {
  new Chart(distributionSpec(source, column, options)).show();
}

// ---- evaluation ----------------------------------------------------------------------------------

/**
 * Validation metrics (`val-core/<data_source>/<metric>`, `val-aux/…`, verl's names) as chart
 * panels: one panel per metric, one line per data source. Empty when the table has none.
 */
export function evaluationKeys(source: MetricsSource | readonly string[]): string[][] {
  const names = Array.isArray(source) ? (source as string[]) : columns(source as MetricsSource);
  const panels = new Map<string, string[]>();
  for (const name of names) {
    const m = /^(val-core|val-aux)\/([^/]+)\/(.+)$/.exec(name);
    if (!m) continue;
    const metric = `${m[1]}/${m[3]}`;
    panels.set(metric, [...(panels.get(metric) ?? []), name]);
  }
  return [...panels.values()];
}

/** Shows the validation metrics per data source; says so when there are none yet. */
export function evaluation(metrics: MetricsSource): void {
  const keys = evaluationKeys(metrics);
  if (keys.length === 0) {
    showBundle({ "text/plain": "no validation metrics (val-core/<data_source>/…) in this table yet" });
    return;
  }
  new Chart(chartSpec(metrics, keys, { title: "validation, per data source" })).show();
}

// ---- runs and branches ---------------------------------------------------------------------------

/** A run to compare: a run folder (its metrics.arrow and branches/), or a named table. */
export type RunSource = string | { name: string; metrics: MetricsSource };

/** The metrics of a run folder: the run itself, then each branch left by restore(), oldest first. */
export function readRunMetrics(runDir: string): { name: string; metrics: Table }[] {
  const file = join(runDir, "metrics.arrow");
  if (!existsSync(file)) throw new Error(`compare: ${runDir} has no metrics.arrow (is it a run folder?)`);
  const read = (f: string) => tableFromIPC(readFileSync(f));
  const out = [{ name: basename(runDir), metrics: read(file) }];
  const branches = join(runDir, "branches");
  if (existsSync(branches)) {
    for (const f of readdirSync(branches)
      .filter((n) => n.endsWith(".arrow"))
      .sort()) {
      out.push({
        name: `${basename(runDir)}/${f.replace(/\.arrow$/, "")}`,
        metrics: read(join(branches, f)),
      });
    }
  }
  return out;
}

const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/**
 * Runs and branches overlaid: the same panels as `chartSpec`, one colour per run (a run folder
 * brings its branches, dashed). Metrics a run lacks are left out of its lines.
 */
export function compareSpec(
  runs: readonly RunSource[],
  keys: ChartKeys,
  options: { title?: string } = {},
): PlotlySpec {
  if (!Array.isArray(runs) || runs.length === 0) throw new RangeError("compare: list at least one run");
  const sources = runs.flatMap((run) =>
    typeof run === "string" ? readRunMetrics(run) : [{ name: run.name, metrics: run.metrics }],
  );
  const specs = sources.map((s) =>
    chartSpec(s.metrics, keys, { missing: "empty", secondAxis: false, ...options }),
  );
  const base = specs[0] as PlotlySpec;
  const data = specs.flatMap(
    (spec, i) =>
      spec.data.map((trace) => ({
        ...trace,
        name: `${(sources[i] as { name: string }).name}: ${trace.name}`,
        showlegend: true,
        line: {
          ...trace.line,
          color: palette[i % palette.length],
          ...((sources[i] as { name: string }).name.includes("/branch-") ? { dash: "dash" } : {}),
        },
        marker: { color: palette[i % palette.length] },
      })) as PlotlyTrace[],
  );
  const layout = { ...base.layout, showlegend: true } as Record<string, unknown>;
  // Every panel lists its lines now (one metric, several runs).
  for (const trace of data) {
    const legend = trace.legend ?? "legend";
    if (!layout[legend]) {
      const axis = layout[trace.yaxis === "y" ? "yaxis" : `yaxis${trace.yaxis.slice(1)}`] as Record<
        string,
        unknown
      >;
      const top = Math.min((axis.domain as number[] | undefined)?.[1] ?? 1, 1);
      layout[legend] = {
        orientation: "h",
        x: 1,
        xanchor: "right",
        y: top,
        yanchor: "bottom",
        font: { size: 11 },
      };
    }
  }
  return { data, layout, config: base.config };
}

/** Shows `compareSpec` in the notebook. */
export function compare(runs: readonly RunSource[], keys: ChartKeys, options: { title?: string } = {}): void {
  new Chart(compareSpec(runs, keys, options)).show();
}

/** Two (or more) steps' rollouts side by side, each an inspector with its own controls. */
export function compareRolloutsHtml(tables: readonly Table[], options: InspectOptions = {}): string {
  if (tables.length < 2) throw new RangeError("compareRollouts: give two or more rollouts tables");
  const views = tables.map((t) => inspector(t, options).html);
  return (
    `<div class="tiller-side-by-side" data-testid="side-by-side" style="display:grid;grid-template-columns:repeat(${tables.length},minmax(0,1fr));gap:12px">` +
    views.map((v) => `<div style="min-width:0">${v}</div>`).join("") +
    "</div>"
  );
}

/** Shows `compareRolloutsHtml` in the notebook (e.g. `compareRollouts([await exp.rollouts(3), await exp.rollouts(9)])`). */
export function compareRollouts(tables: readonly Table[], options: InspectOptions = {}): void {
  showBundle({
    "text/html": compareRolloutsHtml(tables, options),
    "text/plain": `${tables.length} steps' rollouts`,
  });
}

// ---- the controller's experiments ------------------------------------------------------------------

/**
 * The experiments a controller holds, one row each: name, id, steps, state (idle, busy, a step in
 * progress), device, the models it holds on the workers with their memory, run folder.
 */
export async function experimentsTable(cluster: Cluster): Promise<Record<string, unknown>[]> {
  const [list, state] = await Promise.all([cluster.experiments(), cluster.status()]);
  return list.map((exp) => {
    const s = exp.status;
    // The workers name an experiment's models `actor.<name>.…` and `ref.<name>.…`.
    const models = state.workers.flatMap((w) =>
      w.models.filter((m) => m.split(".")[1] === s.name).map((m) => `rank ${w.rank}: ${m.split(".")[0]}`),
    );
    const memory = state.workers.flatMap((w) =>
      Object.entries(w.memory).map(([k, v]) => `${k} ${typeof v === "number" ? formatBytes(v) : String(v)}`),
    );
    return {
      name: s.name,
      id: s.id,
      step: `${s.step}/${s.totalSteps}`,
      state: s.busy ? `busy: ${s.busy}` : s.inProgress ? `step ${s.inProgress.step} in progress` : "idle",
      device: s.device,
      models: models.join(", ") || "—",
      "worker memory": memory.join(", ") || "—",
      "run folder": s.runDir,
    };
  });
}

function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 1024) return String(n);
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = -1;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
}

/** Shows `experimentsTable` in the notebook: what the controller holds, to reuse or close. */
export async function experiments(cluster: Cluster): Promise<void> {
  const rows = await experimentsTable(cluster);
  if (rows.length === 0) showBundle({ "text/plain": "the controller holds no experiment" });
  else table(rows, { title: "experiments in the controller" });
}
