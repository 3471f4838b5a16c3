// Charts of metrics against `step` with plotly.js, fully offline: the plotly bundle comes from
// node_modules and is inlined into the HTML; nothing is ever fetched from a CDN.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { inspect } from "node:util";
import type { Table } from "apache-arrow";
import { MetricsLog } from "../rl/metrics.js";
import { writeFileAtomic } from "../util/atomic-file.js";
import { showBundle } from "./display.js";

/** Where the numbers come from: a metrics log, or any Arrow table with a `step` column. */
export type MetricsSource = MetricsLog | Table;

/**
 * Which metrics go in which panel: a name is a panel of its own, an array of names shares one
 * panel. `"a"` and `["a", "b"]` are one and two panels; `[["a", "b"], "c"]` is two panels.
 */
export type ChartKeys = string | readonly (string | readonly string[])[];

export interface ChartOptions {
  /** The figure's title; by default the metric names. */
  title?: string;
  /** Height of one panel in CSS pixels (default 260). */
  panelHeightPx?: number;
  /**
   * What a name that is not a column does: "error" (the default: a typo should not pass
   * silently) or "empty" (an empty trace, for a live chart drawn before the metric first appears).
   */
  missing?: "error" | "empty";
}

/** One plotly scatter trace. */
export interface PlotlyTrace {
  type: "scatter";
  mode: "lines" | "markers";
  name: string;
  x: number[];
  y: number[];
  xaxis: string;
  yaxis: string;
  showlegend: boolean;
}

/** What `Plotly.newPlot(div, data, layout, config)` takes; also the `application/vnd.plotly.v1+json` payload. */
export interface PlotlySpec {
  data: PlotlyTrace[];
  layout: Record<string, unknown>;
  config: Record<string, unknown>;
}

const defaultPanelHeightPx = 260;
const plotlyMime = "application/vnd.plotly.v1+json";

function panelsOf(keys: ChartKeys): string[][] {
  const list = typeof keys === "string" ? [keys] : keys;
  if (!Array.isArray(list) || list.length === 0) {
    throw new RangeError("keys: expected a metric name or a non-empty list of names or name groups");
  }
  return list.map((entry, i) => {
    const group = typeof entry === "string" ? [entry] : [...entry];
    if (group.length === 0 || group.some((name) => typeof name !== "string" || name === "")) {
      throw new RangeError(`keys[${i}]: expected a metric name or a non-empty list of names`);
    }
    return group;
  });
}

function columnNames(source: MetricsSource): string[] {
  return source instanceof MetricsLog ? source.columns() : source.schema.fields.map((f) => f.name);
}

/** A column as numbers, NaN where null; undefined when there is no such column. */
function columnOf(source: MetricsSource, name: string): Float64Array | undefined {
  if (source instanceof MetricsLog) return source.column(name);
  const vector = source.getChild(name);
  if (!vector) return undefined;
  const out = new Float64Array(vector.length);
  for (let i = 0; i < vector.length; i++) {
    const value = vector.get(i);
    out[i] = value === null || value === undefined ? Number.NaN : Number(value);
  }
  return out;
}

/** The text shared by the start of every name (`actor/pg_loss`, `actor/entropy` → `actor/`). */
function sharedPrefix(names: string[]): string {
  let prefix = names[0] ?? "";
  for (const name of names) while (!name.startsWith(prefix)) prefix = prefix.slice(0, -1);
  return prefix.slice(0, prefix.lastIndexOf("/") + 1);
}

/**
 * A plotly figure: each panel is a line chart of its metrics against `step`, panels stacked with
 * one shared step axis. Points that are null, NaN or infinite are left out, so a metric logged
 * every tenth step is still one line.
 */
export function chartSpec(source: MetricsSource, keys: ChartKeys, options: ChartOptions = {}): PlotlySpec {
  const panels = panelsOf(keys);
  const steps = columnOf(source, "step");
  if (!steps) throw new RangeError("chartSpec: the table has no `step` column to plot against");
  const panelHeightPx = options.panelHeightPx ?? defaultPanelHeightPx;
  if (!(panelHeightPx > 0)) throw new RangeError(`options.panelHeightPx: expected > 0, got ${panelHeightPx}`);
  const data: PlotlyTrace[] = [];
  const layout: Record<string, unknown> = {};
  const annotations: Record<string, unknown>[] = [];
  panels.forEach((names, p) => {
    const axis = p === 0 ? "y" : `y${p + 1}`;
    for (const name of names) {
      const values = columnOf(source, name);
      if (!values && options.missing !== "empty") {
        const known = columnNames(source).filter((c) => c !== "step");
        throw new RangeError(`no metric "${name}"; the columns are: ${known.join(", ") || "(none)"}`);
      }
      const x: number[] = [];
      const y: number[] = [];
      values?.forEach((value, i) => {
        const step = steps[i] as number;
        if (Number.isFinite(value) && Number.isFinite(step)) {
          x.push(step);
          y.push(value);
        }
      });
      data.push({
        type: "scatter",
        mode: x.length > 1 ? "lines" : "markers",
        name,
        x,
        y,
        xaxis: "x",
        yaxis: axis,
        showlegend: names.length > 1,
      });
    }
    // One metric names its axis; several are named by the legend, and the axis by what they share.
    const yTitle = names.length === 1 ? names[0] : sharedPrefix(names).replace(/\/$/, "");
    layout[p === 0 ? "yaxis" : `yaxis${p + 1}`] = yTitle
      ? { title: { text: yTitle }, automargin: true }
      : { automargin: true };
    // The figure's title names a single panel; stacked panels each get a caption.
    if (panels.length > 1)
      annotations.push({
        text: names.join(", "),
        showarrow: false,
        xref: "paper",
        x: 0,
        xanchor: "left",
        yref: `${axis} domain`,
        y: 1,
        yanchor: "bottom",
        font: { size: 13 },
      });
  });
  const titleHeightPx = 60;
  const axisHeightPx = 50;
  Object.assign(layout, {
    title: { text: options.title ?? panels.map((names) => names.join(", ")).join(" | ") },
    grid: { rows: panels.length, columns: 1, pattern: "coupled", roworder: "top to bottom", ygap: 0.25 },
    xaxis: { title: { text: "step" } },
    annotations,
    height: titleHeightPx + axisHeightPx + panels.length * panelHeightPx,
    margin: { t: titleHeightPx + 20, b: axisHeightPx, l: 70, r: 20 },
    hovermode: "x",
    showlegend: panels.some((names) => names.length > 1),
  });
  // No plotly logo link and no "share to the plotly cloud" button: charts here stay offline.
  return { data, layout, config: { responsive: true, displaylogo: false, showSendToCloud: false } };
}

let cachedBundle: string | undefined;

/** The minified plotly.js (basic bundle: scatter, bar, pie) from node_modules, read once. */
export function plotlyBundle(): string {
  cachedBundle ??= readFileSync(createRequire(import.meta.url).resolve("plotly.js-basic-dist-min"), "utf8");
  return cachedBundle;
}

/** Script text made safe to sit between <script> and </script>. */
function scriptSafe(source: string): string {
  // `</script` would end the element and `<!--` changes how the HTML parser reads script text;
  // `<\/` and `<\!` mean the same in JS strings, regular expressions and comments.
  return source.replace(/<\/(script)/gi, "<\\/$1").replace(/<!--/g, "<\\!--");
}

/** A <script> that defines window.Plotly from the inlined bundle unless a page already has it. */
export function plotlyScript(): string {
  // The parameters hide any CommonJS/AMD globals of the page, so the bundle sets window.Plotly.
  return (
    "<script>if (typeof window.Plotly === 'undefined') {(function (module, exports, define) {\n" +
    `${scriptSafe(plotlyBundle())}\n}).call(window);}</script>`
  );
}

export interface ChartHtmlOptions {
  /** Put the plotly bundle (about 1.2 MB) in the fragment, so it draws anywhere (default true). */
  inline?: boolean;
  /** The id of the chart's <div>; by default a fresh random one. */
  divId?: string;
}

const htmlIdPattern = /^[A-Za-z][\w-]*$/;

/**
 * An HTML fragment that draws the chart: a <div>, the plotly bundle (when `inline`) and a script
 * that calls Plotly.newPlot. Without `inline` the page must load plotly first (see `plotlyScript`);
 * if it has not, the <div> says so instead of staying blank.
 */
export function chartHtml(spec: PlotlySpec, options: ChartHtmlOptions = {}): string {
  const divId = options.divId ?? `tiller-chart-${randomBytes(6).toString("hex")}`;
  if (!htmlIdPattern.test(divId)) {
    throw new RangeError(
      `options.divId: expected letters, digits, "-" or "_", starting with a letter; got ${JSON.stringify(divId)}`,
    );
  }
  const height = typeof spec.layout.height === "number" ? spec.layout.height : defaultPanelHeightPx;
  // JSON with `<` escaped is a valid JS expression that cannot close the script element.
  const json = JSON.stringify(spec).replace(/</g, "\\u003c");
  const draw =
    "<script>(function () {\n" +
    `  var div = document.getElementById(${JSON.stringify(divId)});\n` +
    "  if (!div) return;\n" +
    "  if (typeof window.Plotly === 'undefined') {\n" +
    "    div.textContent = 'plotly.js is not loaded on this page: draw the chart with inline: true';\n" +
    "    return;\n" +
    "  }\n" +
    `  var spec = ${json};\n` +
    "  window.Plotly.newPlot(div, spec.data, spec.layout, spec.config);\n" +
    "})();</script>";
  return [
    `<div id="${divId}" class="tiller-chart" style="width: 100%; min-width: 320px; height: ${height}px"></div>`,
    options.inline === false ? "" : plotlyScript(),
    draw,
  ]
    .filter((part) => part !== "")
    .join("\n");
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function formatValue(value: string | number): string {
  if (typeof value === "string") return value;
  if (Number.isInteger(value)) return String(value);
  return Number.isFinite(value) ? String(Number(value.toPrecision(6))) : String(value);
}

export interface ReportOptions {
  title: string;
  /** One chart per group of metric names. */
  charts: readonly (readonly string[])[];
  /** A few headline numbers or facts, shown as a table above the charts. */
  summary?: Readonly<Record<string, string | number>>;
}

/** The report as one self-contained HTML page (plotly inlined once, no network needed). */
export function reportHtml(metrics: MetricsSource, options: ReportOptions): string {
  if (options.charts.length === 0) throw new RangeError("options.charts: list at least one group of metrics");
  const steps = columnOf(metrics, "step");
  const rows = steps?.length ?? 0;
  const stepRange = rows > 0 ? `steps ${steps?.[0]}–${steps?.[rows - 1]}, ${rows} rows` : "no rows";
  const summaryRows = Object.entries(options.summary ?? {})
    .map(([key, value]) => `<tr><th>${escapeHtml(key)}</th><td>${escapeHtml(formatValue(value))}</td></tr>`)
    .join("\n");
  const charts = options.charts.map((group, i) =>
    chartHtml(chartSpec(metrics, [group], { title: group.join(", ") }), {
      inline: false,
      divId: `chart-${i + 1}`,
    }),
  );
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(options.title)}</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; padding: 0 16px; color: #222; }
  h1 { font-size: 22px; margin-bottom: 4px; }
  .steps { color: #666; margin-top: 0; }
  table.summary { border-collapse: collapse; margin: 16px 0 24px; }
  table.summary th, table.summary td { border-bottom: 1px solid #ddd; padding: 4px 12px; text-align: left; }
  table.summary td { font-variant-numeric: tabular-nums; }
  .tiller-chart { margin-bottom: 24px; }
</style>
${plotlyScript()}
</head>
<body>
<h1>${escapeHtml(options.title)}</h1>
<p class="steps">${escapeHtml(stepRange)}</p>
${summaryRows ? `<table class="summary">\n${summaryRows}\n</table>` : ""}
${charts.join("\n")}
</body>
</html>
`;
}

/** Writes `reportHtml` to `file`, atomically. */
export async function writeReport(
  file: string,
  metrics: MetricsSource,
  options: ReportOptions,
): Promise<void> {
  await writeFileAtomic(file, reportHtml(metrics, options));
}

function describeSpec(spec: PlotlySpec): string {
  const names = spec.data.map((trace) => trace.name);
  const points = spec.data.reduce((n, trace) => n + trace.x.length, 0);
  return `${names.join(", ")}; ${points} points`;
}

/** What `plot` returns: the plotly spec and the HTML that draws it, shown already in a notebook. */
export class Chart {
  constructor(
    readonly spec: PlotlySpec,
    readonly html: string,
    /** Whether it was sent to the notebook (false outside a tslab kernel). */
    readonly displayed: boolean,
  ) {}

  /** A one-line description, also what a notebook prints for `plot(...)` as a cell's last line. */
  toString(): string {
    return `Chart(${describeSpec(this.spec)}${this.displayed ? "" : "; not displayed: no notebook"})`;
  }

  [inspect.custom](): string {
    return this.toString();
  }
}

/**
 * Draws metrics against `step`. In a tslab notebook it shows one output carrying both the plotly
 * MIME type (for front ends with a plotly renderer) and HTML with plotly inlined (for every other
 * front end and for nbconvert); elsewhere it only returns the spec and the HTML.
 */
export function plot(source: MetricsSource, keys: ChartKeys, options: ChartOptions = {}): Chart {
  const spec = chartSpec(source, keys, options);
  const html = chartHtml(spec, { inline: true });
  const displayed = showBundle({
    [plotlyMime]: spec,
    "text/html": html,
    "text/plain": `Chart(${describeSpec(spec)})`,
  });
  return new Chart(spec, html, displayed);
}
