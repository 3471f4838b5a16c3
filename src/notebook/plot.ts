// Charts of metrics against `step` with plotly.js, fully offline: the plotly bundle comes from
// node_modules and is inlined into the HTML; nothing is ever fetched from a CDN.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { inspect } from "node:util";
import type { Table } from "apache-arrow";
import { MetricsLog } from "../rl/metrics.js";
import { type MimeBundle, showBundle } from "./display.js";

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
  /**
   * A metric of a very different size from its panel's first goes on an axis of its own at the
   * right (default true); false keeps one axis per panel (compare() lines up several runs so).
   */
  secondAxis?: boolean;
}

/** One plotly trace: lines (metrics over steps), bars (histograms, stacked timings) or a heatmap. */
export interface PlotlyTrace {
  type: "scatter" | "bar";
  mode?: "lines" | "markers" | "lines+markers";
  name: string;
  x: number[];
  y: number[];
  xaxis: string;
  yaxis: string;
  showlegend: boolean;
  /** Which of the figure's legends lists it: each panel with several series has its own. */
  legend?: string;
  /** "hv" for settings (lr, coefficients): they change between steps, so they are drawn as steps. */
  line?: { shape: "linear" | "hv" };
  hovertemplate?: string;
  marker?: Record<string, unknown>;
  colorscale?: string;
  colorbar?: Record<string, unknown>;
  width?: number;
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
export function columnOf(source: MetricsSource, name: string): Float64Array | undefined {
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

/** The text shared by the start of every name, up to a "/" (`actor/pg_loss`, `actor/entropy` → `actor/`). */
function sharedPrefix(names: string[]): string {
  let prefix = names[0] ?? "";
  for (const name of names) while (!name.startsWith(prefix)) prefix = prefix.slice(0, -1);
  return prefix.slice(0, prefix.lastIndexOf("/") + 1);
}

/** Breaks a long label at ", " or "/" into lines of about `width` characters (plotly's <br>). */
export function wrapLabel(text: string, width = 40): string {
  if (text.length <= width) return text;
  const parts = text.split(/(?<=, |\/)/);
  const lines: string[] = [];
  let line = "";
  for (const part of parts) {
    if (line && line.length + part.length > width) {
      lines.push(line);
      line = "";
    }
    line += part;
  }
  if (line) lines.push(line);
  return lines.map((l) => l.trimEnd()).join("<br>");
}

/** An axis title for several metrics: the names, their shared prefix said once. */
function axisTitle(names: string[]): string {
  if (names.length === 1) return wrapLabel(names[0] as string, 34);
  const prefix = sharedPrefix(names);
  const rest = names.map((n) => n.slice(prefix.length));
  return wrapLabel(prefix ? `${prefix} ${rest.join(", ")}` : names.join(", "), 34);
}

/** Settings that change only between steps (set()): drawn as steps, not slopes. */
const settingPattern = /(^|\/)(lr|learning_rate)$|kl_coef|(_|\/)coeff?$/;

/** The largest |value| among the finite ones; 0 when there is none. */
function magnitude(values: number[]): number {
  let m = 0;
  for (const v of values) if (Math.abs(v) > m) m = Math.abs(v);
  return m;
}

/** Two series whose sizes differ more than this share no axis: the smaller one would be flat. */
const scaleRatio = 10;

/** A y range for values that are all equal (plotly would centre a flat line at 0 with ±1). */
function flatRange(values: number[]): [number, number] | undefined {
  if (values.length === 0) return undefined;
  const v = values[0] as number;
  if (!values.every((x) => x === v)) return undefined;
  const d = v === 0 ? 1 : Math.abs(v) * 0.5;
  return [v - d, v + d];
}

/**
 * Number formats for metric values: plain decimals, powers of ten for the very small or large
 * (never SI letters, whose "m" and "n" read as million and nano: pg_loss 2e-8 is not "20n").
 */
const yAxisFormat = { exponentformat: "power", showexponent: "all", hoverformat: ".4~g" } as const;

/** Integer step ticks: every step when there are few (no 1.5), plotly's choice otherwise. */
function stepAxis(steps: number[]): Record<string, unknown> {
  const finite = steps.filter(Number.isFinite);
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  const axis: Record<string, unknown> = { tickformat: "d", hoverformat: "d" };
  if (finite.length === 0) return axis;
  if (hi - lo < 10) {
    axis.dtick = 1;
    axis.tick0 = lo;
    if (hi === lo) axis.range = [lo - 1, hi + 1];
  }
  return axis;
}

interface Series {
  name: string;
  x: number[];
  y: number[];
}

function seriesOf(
  source: MetricsSource,
  steps: Float64Array,
  name: string,
  missing: ChartOptions["missing"],
): Series {
  const values = columnOf(source, name);
  if (!values && missing !== "empty") {
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
  return { name, x, y };
}

/**
 * A plotly figure: each panel is a line chart of its metrics against `step`, panels stacked with
 * linked step axes (zooming one zooms all). Points that are null, NaN or infinite are left out, so
 * a metric logged every tenth step is still one line. A panel with several metrics has its own
 * legend; a metric of a very different size from the panel's first goes on a second axis at the
 * right, titled with its name.
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
  const title = options.title ?? (panels.length === 1 ? (panels[0] as string[]).join(", ") : undefined);
  const titlePx = title ? 50 : 10;
  const gapPx = 70;
  const bottomPx = 50;
  const height = titlePx + bottomPx + panels.length * panelHeightPx + (panels.length - 1) * gapPx + 30;
  const plotPx = height - titlePx - 30 - bottomPx;
  const stepAxisLayout = stepAxis(Array.from(steps));
  let axisCount = 0;
  panels.forEach((names, p) => {
    const series = names.map((name) => seriesOf(source, steps, name, options.missing));
    const first = magnitude(series[0]?.y ?? []);
    const differs = (s: Series) => {
      const m = magnitude(s.y);
      return first > 0 && m > 0 && (m / first > scaleRatio || first / m > scaleRatio);
    };
    const left = series.filter((s, i) => i === 0 || !differs(s) || options.secondAxis === false);
    const right = options.secondAxis === false ? [] : series.filter((s, i) => i > 0 && differs(s));
    const leftId = ++axisCount;
    const rightId = right.length > 0 ? ++axisCount : undefined;
    const yName = (id: number) => (id === 1 ? "y" : `y${id}`);
    const xName = p === 0 ? "x" : `x${p + 1}`;
    const legend = p === 0 ? "legend" : `legend${p + 1}`;
    const top = 1 - (p * (panelHeightPx + gapPx)) / plotPx;
    const bottom = top - panelHeightPx / plotPx;
    for (const s of series) {
      const onRight = right.includes(s);
      const stepped = settingPattern.test(s.name);
      data.push({
        type: "scatter",
        mode: s.x.length === 1 ? "markers" : s.x.length <= 40 ? "lines+markers" : "lines",
        name: onRight ? `${s.name} (right axis)` : s.name,
        x: s.x,
        y: s.y,
        xaxis: xName,
        yaxis: yName(onRight && rightId ? rightId : leftId),
        showlegend: names.length > 1,
        legend,
        line: { shape: stepped ? "hv" : "linear" },
        hovertemplate: `${s.name}<br>step %{x}: %{y:.5~g}<extra></extra>`,
      });
    }
    const axisLayout = (group: Series[]) => {
      const values = group.flatMap((s) => s.y);
      const flat = flatRange(values);
      return {
        title: { text: axisTitle(group.map((s) => s.name)), font: { size: 12 } },
        automargin: true,
        ...yAxisFormat,
        ...(flat ? { range: flat } : {}),
      };
    };
    layout[leftId === 1 ? "yaxis" : `yaxis${leftId}`] = {
      ...axisLayout(left),
      domain: [Math.max(bottom, 0), Math.min(top, 1)],
      anchor: xName,
    };
    if (rightId) {
      layout[`yaxis${rightId}`] = {
        ...axisLayout(right),
        overlaying: yName(leftId),
        side: "right",
        anchor: xName,
        showgrid: false,
      };
    }
    layout[p === 0 ? "xaxis" : `xaxis${p + 1}`] = {
      ...stepAxisLayout,
      anchor: yName(leftId),
      ...(p > 0 ? { matches: "x" } : {}),
      ...(p === panels.length - 1 ? { title: { text: "step" } } : {}),
    };
    if (names.length > 1) {
      layout[legend] = {
        orientation: "h",
        x: 1,
        xanchor: "right",
        y: Math.min(top, 1),
        yanchor: "bottom",
        yref: "paper",
        bgcolor: "rgba(255,255,255,0.6)",
        font: { size: 11 },
      };
    }
    // Stacked panels each get a caption at their top left (the figure's title names a single one).
    if (panels.length > 1)
      annotations.push({
        text: wrapLabel(names.join(", "), names.length > 1 ? 50 : 90),
        showarrow: false,
        xref: "paper",
        x: 0,
        xanchor: "left",
        yref: "paper",
        y: Math.min(top, 1),
        yanchor: "bottom",
        align: "left",
        font: { size: 13 },
      });
  });
  Object.assign(layout, {
    ...(title ? { title: { text: wrapLabel(title, 70), font: { size: 15 } } } : {}),
    annotations,
    height,
    margin: {
      t: titlePx + 30,
      b: bottomPx,
      l: 80,
      r: data.some((t) => t.name.endsWith("(right axis)")) ? 80 : 30,
    },
    hovermode: "x unified",
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
    "    div.textContent = 'plotly.js is not on this page (the output that carried it was cleared): run notebook.loadPlotly(true) in a cell, or draw with chartHtml(spec, { inline: true })';\n" +
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

function describeSpec(spec: PlotlySpec): string {
  const names = spec.data.map((trace) => trace.name);
  const points = spec.data.reduce((n, trace) => n + trace.x.length, 0);
  return `${names.join(", ")}; ${points} points`;
}

// The kernel sends the 1.2 MB plotly bundle to its page once (with the first chart), not with every
// chart: a notebook's outputs share one page, in JupyterLab as in nbconvert's HTML. Kept on
// globalThis so that two copies of this module in one kernel still send it once.
const plotlySentKey = Symbol.for("tiller.notebook.plotlySent");
const sent = globalThis as { [plotlySentKey]?: boolean };

/**
 * Sends plotly.js to the notebook page as an output of its own, unless this kernel sent it already
 * (`force` sends it again: after the output that carried it was cleared and the page reloaded).
 * Returns whether it is on the page as far as this kernel knows (false outside a notebook).
 */
export function loadPlotly(force = false): boolean {
  if (sent[plotlySentKey] && !force) return true;
  const shown = showBundle({ "text/html": plotlyScript(), "text/plain": "" });
  if (shown) sent[plotlySentKey] = true;
  return shown;
}

/** A chart as an output: the plotly MIME type, and HTML carrying the bundle if the page lacks it. */
function chartBundle(spec: PlotlySpec): { bundle: MimeBundle; inline: boolean } {
  const inline = !sent[plotlySentKey];
  return {
    bundle: {
      [plotlyMime]: spec,
      "text/html": chartHtml(spec, { inline }),
      "text/plain": `Chart(${describeSpec(spec)})`,
    },
    inline,
  };
}

/** A figure ready to show: its plotly spec and the self-contained HTML that draws it. */
export class Chart {
  readonly html: string;
  constructor(readonly spec: PlotlySpec) {
    this.html = chartHtml(spec, { inline: true });
  }

  /**
   * Shows it as an output of the running cell (the plotly bundle goes with the first chart of the
   * kernel only). Returns false, showing nothing, outside a notebook.
   */
  show(): boolean {
    const { bundle, inline } = chartBundle(this.spec);
    const shown = showBundle(bundle);
    if (shown && inline) sent[plotlySentKey] = true;
    return shown;
  }

  /** A one-line description: the series and how many points. */
  toString(): string {
    return `Chart(${describeSpec(this.spec)})`;
  }

  [inspect.custom](): string {
    return this.toString();
  }
}

/** Builds a chart of metrics against `step` without showing it (see `plot`). */
export function chart(source: MetricsSource, keys: ChartKeys, options: ChartOptions = {}): Chart {
  return new Chart(chartSpec(source, keys, options));
}

/**
 * Draws metrics against `step` in the notebook: one output carrying both the plotly MIME type (for
 * front ends with a plotly renderer) and HTML (for every other front end and for nbconvert). It
 * returns nothing, so that a cell ending with it shows the chart and no text line under it; use
 * `chart(...)` for the spec and HTML (outside a notebook too).
 */
export function plot(source: MetricsSource, keys: ChartKeys, options: ChartOptions = {}): void {
  chart(source, keys, options).show();
}
