// A plan (src/plan) in a notebook: a table per pipeline stage and a stacked memory bar per stage
// (its ranks' peak phase, by category) against the GPU's usable memory, and the step-time parts.
import type { Plan } from "../plan/plan.js";
import { showBundle } from "./display.js";
import { Chart, type PlotlySpec, type PlotlyTrace } from "./plot.js";
import { tableHtml } from "./views.js";

const gib = (bytes: number) => Number((bytes / 2 ** 30).toFixed(2));

/** One row per pipeline stage: static memory (exact), activations (estimate), the peak and its phase, GiB. */
export function planRows(p: Plan): Record<string, unknown>[] {
  return p.stages.map((s) => {
    const st = s.static;
    const o = st.optimizer;
    return {
      stage: s.stage,
      layers: `${s.layers[0]}–${s.layers[1] - 1}`,
      ranks: s.ranks,
      "embedding GiB": gib(st.parameters.embedding),
      "dense GiB": gib(st.parameters.dense + st.parameters.vision),
      "expert GiB": gib(st.parameters.expert),
      "gradients GiB": gib(st.gradients),
      "optimizer GiB": gib(o.masters + o.moments + o.normMask),
      "activations GiB": gib(s.activations.total),
      "in flight": s.activations.inFlight,
      "peak GiB": gib(s.peak.bytes),
      "peak phase": s.peak.phase,
    };
  });
}

const categories = [
  "parameters",
  "reference",
  "buffers",
  "gradients",
  "optimizer",
  "optimizerStepTransient",
  "activations",
  "logprobChunk",
  "rolloutWeights",
  "kvCache",
  "samplingLogits",
];

/** Stacked bars: each stage's memory at its peak phase by category, GiB, with the usable memory as a line. */
export function planMemorySpec(p: Plan): PlotlySpec {
  const x = p.stages.map((s) => s.stage);
  const bars: PlotlyTrace[] = categories
    .map((category) => ({
      type: "bar" as const,
      name: category,
      x,
      y: p.stages.map((s) => gib(s.phases[s.peak.phase][category] ?? 0)),
      xaxis: "x",
      yaxis: "y",
      showlegend: true,
      hovertemplate: `${category}<br>stage %{x}: %{y:.2f} GiB<extra></extra>`,
    }))
    .filter((t) => t.y.some((v) => v > 0));
  const limit: PlotlyTrace = {
    type: "scatter",
    mode: "lines",
    name: `usable (${gib(p.cluster.usableBytesPerGpu)} GiB)`,
    x: [x[0] as number, x[x.length - 1] as number],
    y: [gib(p.cluster.usableBytesPerGpu), gib(p.cluster.usableBytesPerGpu)],
    xaxis: "x",
    yaxis: "y",
    showlegend: true,
  };
  return {
    data: [...bars, limit],
    layout: {
      title: {
        text: `${p.model.architecture}, train ${p.train.describe}, rollout TP${p.rollout.tensor}: memory per rank at each stage's peak`,
      },
      barmode: "stack",
      height: 360,
      xaxis: {
        title: { text: "pipeline stage (its peak phase)" },
        tickvals: x,
        ticktext: p.stages.map((s) => `${s.stage} (${s.peak.phase})`),
      },
      yaxis: { title: { text: "GiB per rank" } },
      legend: { orientation: "h", y: -0.3 },
      margin: { t: 40, r: 20, b: 90, l: 60 },
    },
    config: { displaylogo: false, responsive: true },
  };
}

/** The table, the step-time parts and the notes as HTML (the chart is a separate output). */
export function planHtml(p: Plan): string {
  const time = p.time.parts.map((part) => ({
    part: part.name,
    "seconds (estimate)": Number(part.seconds.toFixed(1)),
    detail: part.detail,
  }));
  time.push({
    part: "total",
    "seconds (estimate)": Number(p.time.totalSeconds.toFixed(1)),
    detail: `perf/mfu/actor ≈ ${p.time.mfuActor.toFixed(3)}`,
  });
  const verdict = p.fits ? "fits" : `does not fit: ${gib(p.shortBytes)} GiB short per GPU`;
  return [
    tableHtml(planRows(p), {
      title: `${p.cluster.gpus} × ${p.cluster.gpu.name}, train ${p.train.describe}: ${verdict}`,
      maxRows: 1000,
    }),
    tableHtml(time, { title: "step time" }),
    p.notes.length
      ? `<ul class="tiller-plan-notes">${p.notes.map((n) => `<li>${n.replace(/[&<>]/g, (c) => `&#${c.charCodeAt(0)};`)}</li>`).join("")}</ul>`
      : "",
  ].join("\n");
}

/** Shows a plan in the notebook: the stage table and step time, then the stacked memory bars. */
export function planView(p: Plan): void {
  showBundle({
    "text/html": planHtml(p),
    "text/plain": `plan: ${p.train.describe}, ${p.time.totalSeconds.toFixed(0)} s/step`,
  });
  new Chart(planMemorySpec(p)).show();
}
