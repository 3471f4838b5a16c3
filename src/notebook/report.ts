// A run's report as one self-contained HTML page: headline numbers, the metric charts (their step
// axes zoom together), the stacked stage timings, the config and its change log, and sample
// rollouts (the best and the worst groups). Plotly is inlined once; nothing is fetched.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type Table, tableFromIPC } from "apache-arrow";
import { writeFileAtomic } from "../util/atomic-file.js";
import { chartHtml, chartSpec, columnOf, type MetricsSource, type PlotlySpec, plotlyScript } from "./plot.js";
import { evaluationKeys, tableHtml, timingSpec } from "./views.js";

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function formatValue(value: string | number): string {
  if (typeof value === "string") return value;
  if (Number.isInteger(value)) return String(value);
  return Number.isFinite(value) ? String(Number(value.toPrecision(6))) : String(value);
}

/** One line of a run folder's change log (`changes.jsonl`): a set() or a restore(). */
export type ChangeLogEntry = Readonly<Record<string, unknown>>;

export interface ReportOptions {
  title: string;
  /** One chart per group of metric names (validation metrics, when there are, are added). */
  charts: readonly (readonly string[])[];
  /** A few headline numbers or facts, shown as a table above the charts. */
  summary?: Readonly<Record<string, string | number>>;
  /** Add the stacked stage timings (default: when the metrics have timing_s/<stage> columns). */
  timings?: boolean;
  /** The run's config, shown folded. */
  config?: unknown;
  /** The change log: what set() changed at which step, and the restores. */
  changes?: readonly ChangeLogEntry[];
  /** A step's rollouts: its best and worst groups (by mean score) are shown. */
  rollouts?: Table;
  /** How many best and worst groups (default 2 each). */
  sampleGroups?: number;
}

/** The best and worst groups of a rollouts table by mean score, as rows to show. */
export function sampleGroups(
  rollouts: Table,
  perSide = 2,
): { label: string; rows: Record<string, unknown>[] }[] {
  const uid = rollouts.getChild("uid");
  const score = columnOf(rollouts, "score") ?? columnOf(rollouts, "reward");
  if (!uid || !score) return [];
  const prompt = rollouts.getChild("prompt");
  const response = rollouts.getChild("response");
  const advantage = columnOf(rollouts, "advantage");
  const length = columnOf(rollouts, "response_length");
  const groups = new Map<string, number[]>();
  for (let i = 0; i < rollouts.numRows; i++) {
    const u = String(uid.get(i));
    groups.set(u, [...(groups.get(u) ?? []), i]);
  }
  const mean = (rows: number[]) => rows.reduce((s, i) => s + (score[i] as number), 0) / rows.length;
  const ranked = [...groups].sort((a, b) => mean(b[1]) - mean(a[1]));
  const pick = (list: [string, number[]][], label: string) =>
    list.map(([u, rows]) => ({
      label: `${label}: group ${u} (mean score ${formatValue(mean(rows))}) · prompt ${JSON.stringify(String(prompt?.get(rows[0] as number) ?? ""))}`,
      rows: rows.map((i) => ({
        response: String(response?.get(i) ?? ""),
        score: score[i],
        advantage: advantage?.[i],
        tokens: length?.[i],
      })),
    }));
  const best = ranked.slice(0, perSide);
  const worst = ranked.slice(Math.max(perSide, ranked.length - perSide)).reverse();
  return [...pick(best, "best"), ...pick(worst, "worst")];
}

// Zooming one chart's steps zooms every chart of the page (a plotly_relayout on one sets the others).
const linkedZoomScript = `<script>window.addEventListener("load", function () {
  var charts = Array.prototype.slice.call(document.querySelectorAll(".tiller-chart"));
  var busy = false;
  charts.forEach(function (div) {
    if (!div.on) return;
    div.on("plotly_relayout", function (e) {
      if (busy) return;
      // A drag sends "xaxis.range[0]" and "[1]", relayout() "xaxis.range"; any panel's axis (they match).
      var range = null;
      var auto = false;
      Object.keys(e).forEach(function (k) {
        var m = /^xaxis\\d*\\.(range|autorange)(\\[([01])\\])?$/.exec(k);
        if (!m) return;
        if (m[1] === "autorange") auto = e[k] === true;
        else if (m[3] === undefined) range = e[k].slice();
        else { range = range || [null, null]; range[Number(m[3])] = e[k]; }
      });
      if (!range && !auto) return;
      busy = true;
      charts.forEach(function (other) {
        if (other === div || !other.layout) return;
        var update = {};
        Object.keys(other.layout).forEach(function (k) {
          if (!/^xaxis\\d*$/.test(k)) return;
          var now = other.layout[k].range;
          // Already there: no update, so the event that comes back does not bounce on forever.
          if (range && now && now[0] === range[0] && now[1] === range[1]) return;
          if (auto && other.layout[k].autorange === true) return;
          if (range) update[k + ".range"] = range; else update[k + ".autorange"] = true;
        });
        if (Object.keys(update).length) window.Plotly.relayout(other, update);
      });
      busy = false;
    });
  });
});</script>`;

/** The report as one self-contained HTML page (plotly inlined once, no network needed). */
export function reportHtml(metrics: MetricsSource, options: ReportOptions): string {
  if (options.charts.length === 0) throw new RangeError("options.charts: list at least one group of metrics");
  const steps = columnOf(metrics, "step");
  const rows = steps?.length ?? 0;
  const stepRange = rows > 0 ? `steps ${steps?.[0]}–${steps?.[rows - 1]}, ${rows} rows` : "no rows";
  const summaryRows = Object.entries(options.summary ?? {})
    .map(([key, value]) => `<tr><th>${escapeHtml(key)}</th><td>${escapeHtml(formatValue(value))}</td></tr>`)
    .join("\n");
  const specs: PlotlySpec[] = options.charts.map((group) =>
    chartSpec(metrics, [group], { title: group.join(", ") }),
  );
  const evaluation = evaluationKeys(metrics);
  if (evaluation.length > 0)
    specs.push(chartSpec(metrics, evaluation, { title: "validation, per data source" }));
  const wantTimings = options.timings ?? true;
  if (wantTimings) {
    try {
      specs.push(timingSpec(metrics));
    } catch (error) {
      if (options.timings === true) throw error;
    }
  }
  const charts = specs.map((spec, i) => chartHtml(spec, { inline: false, divId: `chart-${i + 1}` }));
  const sections: string[] = [];
  if (options.rollouts) {
    const samples = sampleGroups(options.rollouts, options.sampleGroups ?? 2);
    if (samples.length > 0) {
      const stepOf = columnOf(options.rollouts, "step")?.[0];
      sections.push(
        `<h2>Sample rollouts${stepOf !== undefined ? ` of step ${stepOf}` : ""}: best and worst groups</h2>`,
        `<div data-testid="sample-rollouts">${samples.map((g) => tableHtml(g.rows, { title: g.label })).join("\n")}</div>`,
      );
    }
  }
  if (options.changes && options.changes.length > 0) {
    const rowsOfChanges = options.changes.map((c) => ({
      step: c.step,
      event: c.event,
      what:
        c.event === "set"
          ? Object.entries((c.changed as Record<string, [unknown, unknown]>) ?? {})
              .map(([k, [a, b]]) => `${k}: ${JSON.stringify(a)} → ${JSON.stringify(b)}`)
              .join("; ")
          : c.event === "restore"
            ? `back to step ${c.toStep}; the steps left are kept as ${c.branch}`
            : JSON.stringify(c),
      time: c.time,
    }));
    sections.push("<h2>Change log</h2>", `<div data-testid="change-log">${tableHtml(rowsOfChanges)}</div>`);
  }
  if (options.config !== undefined) {
    sections.push(
      `<details data-testid="config"><summary>Config</summary><pre>${escapeHtml(JSON.stringify(options.config, null, 2))}</pre></details>`,
    );
  }
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(options.title)}</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; padding: 0 16px; color: #222; }
  h1 { font-size: 22px; margin-bottom: 4px; }
  h2 { font-size: 17px; margin: 24px 0 8px; }
  .steps { color: #666; margin-top: 0; }
  table.summary { border-collapse: collapse; margin: 16px 0 24px; }
  table.summary th, table.summary td { border-bottom: 1px solid #ddd; padding: 4px 12px; text-align: left; }
  table.summary td { font-variant-numeric: tabular-nums; }
  .tiller-chart { margin-bottom: 24px; }
  pre { background: #f5f6f8; padding: 8px; overflow-x: auto; font-size: 12px; }
</style>
${plotlyScript()}
</head>
<body>
<h1>${escapeHtml(options.title)}</h1>
<p class="steps">${escapeHtml(stepRange)}</p>
${summaryRows ? `<table class="summary">\n${summaryRows}\n</table>` : ""}
${charts.join("\n")}
${sections.join("\n")}
${linkedZoomScript}
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

/** What a run folder holds for a report: metrics.arrow, config.json and the change log. */
export function readRunFolder(runDir: string): {
  metrics: Table;
  config: unknown;
  changes: ChangeLogEntry[];
} {
  const file = join(runDir, "metrics.arrow");
  if (!existsSync(file)) throw new Error(`${runDir} has no metrics.arrow (is it a run folder?)`);
  const metrics = tableFromIPC(readFileSync(file));
  const configFile = join(runDir, "config.json");
  const config = existsSync(configFile) ? JSON.parse(readFileSync(configFile, "utf8")) : undefined;
  const changesFile = join(runDir, "changes.jsonl");
  const changes = existsSync(changesFile)
    ? readFileSync(changesFile, "utf8")
        .split("\n")
        .filter((line) => line.trim() !== "")
        .map((line) => JSON.parse(line) as ChangeLogEntry)
    : [];
  return { metrics, config, changes };
}

/** The charts a run report shows by default: reward, losses, lengths, throughput. */
export const defaultReportCharts: readonly (readonly string[])[] = [
  ["critic/score/mean"],
  ["actor/pg_loss"],
  ["actor/entropy", "actor/ppo_kl"],
  ["actor/grad_norm"],
  ["response_length/mean", "response_length/max"],
  ["perf/throughput"],
];

/**
 * Writes `<runDir>/report.html` from the run folder (metrics, config, change log), with sample
 * rollouts when given (e.g. `await exp.rollouts()`). Charts of metrics the run lacks are left out.
 */
export async function writeRunReport(
  runDir: string,
  options: Partial<ReportOptions> & { file?: string } = {},
): Promise<string> {
  const { metrics, config, changes } = readRunFolder(runDir);
  const present = new Set(metrics.schema.fields.map((f) => f.name));
  const charts = (options.charts ?? defaultReportCharts)
    .map((group) => group.filter((name) => present.has(name)))
    .filter((group) => group.length > 0);
  if (charts.length === 0) {
    throw new RangeError(`writeRunReport: none of the charts' metrics are in ${runDir}/metrics.arrow`);
  }
  const file = options.file ?? join(runDir, "report.html");
  await writeReport(file, metrics, {
    ...options,
    title: options.title ?? `run ${runDir}`,
    charts,
    config: options.config ?? config,
    changes: options.changes ?? changes,
  });
  return file;
}
