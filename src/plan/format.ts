// Plans and search results as text (the CLI's output): a header, memory per stage, the slowest
// stage's communication, the step-time parts, the assumptions and the notes.
import { fmt, type Plan } from "./plan.js";
import { describeChoice, type SearchResult } from "./search.js";
import type { GroupTraffic } from "./traffic.js";

const gib = (bytes: number) => (bytes / 2 ** 30).toFixed(1);
const billions = (n: number) => `${(n / 1e9).toFixed(1)}B`;
const pad = (s: string, n: number) => s.padStart(n);

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) =>
    r.map((x, i) => (i === 0 ? x.padEnd(widths[i] ?? 0) : pad(x, widths[i] ?? 0))).join("  ");
  return [line(header), ...rows.map(line)].join("\n");
}

function layersText(p: Plan): string {
  const counts = p.stages.map((s) => s.layers[1] - s.layers[0]);
  const runs: string[] = [];
  for (let i = 0; i < counts.length; ) {
    let j = i;
    while (j < counts.length && counts[j] === counts[i]) j++;
    runs.push(j - i > 1 ? `${j - i}×${counts[i]}` : `${counts[i]}`);
    i = j;
  }
  return runs.join(", ");
}

export function formatPlan(p: Plan): string {
  const m = p.model;
  const b = p.batch;
  const r = p.rollout;
  const moe = m.moe ? `, ${m.moe.experts} experts top-${m.moe.topK} in ${m.moe.layers} layers` : "";
  const lines = [
    `${m.architecture} · ${billions(m.parameters.total)} parameters (${billions(m.parameters.active)} active per token) · ${m.layers} layers${moe}`,
    `${p.cluster.gpus} × ${p.cluster.gpu.name} (${p.cluster.nodes} node${p.cluster.nodes > 1 ? "s" : ""}; ${fmt(p.cluster.usableBytesPerGpu)} usable per GPU after ${fmt(p.assumptions.runtimeReserveBytes)} reserved)`,
    `batch: ${b.promptsPerStep} prompts × ${b.samplesPerPrompt} = ${b.sequences} sequences of ≤ ${b.promptTokens} + ${b.responseTokens} tokens (mean response ${b.meanResponseTokens}); ${b.miniBatchesPerStep} mini-batch${b.miniBatchesPerStep > 1 ? "es" : ""}, ${b.tokensPerMicroBatch} tokens per micro-batch`,
    `train: ${p.train.describe}, stages of ${layersText(p)} layers, ${p.train.microBatchesPerMiniBatch} micro-batches per mini-batch per replica, recompute ${p.config.recompute}, offload ${p.config.offload.parameters ? "parameters" : ""}${p.config.offload.parameters && p.config.offload.optimizer ? " + " : ""}${p.config.offload.optimizer ? "optimizer" : ""}${!p.config.offload.parameters && !p.config.offload.optimizer ? "none" : ""}${p.train.engine.length ? " (the engine does not run it yet)" : ""}`,
    `rollout: TP${r.tensor} × ${r.data} replicas, ${r.inPlace ? "the training weights in place" : `own weights ${fmt(r.weightBytes)} per rank`}, KV ${(r.kvBytesPerToken / 1024).toFixed(1)} KiB per token per rank, ${r.concurrentSequences} of ${r.sequencesPerReplica} sequences at once (${fmt(r.kvCacheBytes)})`,
    "",
    "memory per rank, GiB (exact: params, grads, optimizer; estimates: activations, KV cache)",
    table(
      ["stage", "layers", "params", "grads", "optimizer", "activations", "step transient", "rollout", "peak"],
      p.stages.map((s) => {
        const st = s.static;
        const params =
          st.parameters.embedding + st.parameters.dense + st.parameters.expert + st.parameters.vision;
        const o = st.optimizer;
        const roll = Object.values(s.phases.rollout).reduce((x, y) => x + y, 0);
        return [
          `${s.stage}`,
          `${s.layers[0]}–${s.layers[1] - 1}`,
          gib(params + st.buffers),
          gib(st.gradients),
          gib(o.masters + o.moments + o.normMask),
          `${gib(s.activations.total)} (${s.activations.inFlight}×)`,
          gib(st.optimizerStepTransient),
          gib(roll),
          `${gib(s.peak.bytes)} ${s.peak.phase}`,
        ];
      }),
    ),
    `training peak ${fmt(p.trainingPeak.bytes)} (stage ${p.trainingPeak.stage}, ${p.trainingPeak.phase}) of ${fmt(p.cluster.usableBytesPerGpu)}: ${p.fits ? "fits" : `does not fit (${fmt(p.shortBytes)} short per GPU)`}` +
      (p.host.perNodeBytes > 0 ? `; host ${fmt(p.host.perNodeBytes)} per node` : ""),
    "",
  ];
  const slowest = p.stages.reduce((w, s) => (sumSeconds(s.traffic) > sumSeconds(w.traffic) ? s : w));
  const comm = [...slowest.traffic, ...r.traffic];
  if (comm.length > 0) {
    lines.push(
      `communication per rank per step (stage ${slowest.stage}, and the rollout)`,
      table(
        ["group", "collective", "ranks", "link", "calls", "bytes", "seconds"],
        comm.map((e) => [
          e.group,
          e.collective,
          `${e.ranks}`,
          e.acrossNodes ? "network" : "NVLink",
          `${e.calls}`,
          fmt(e.payloadBytes),
          e.seconds.toFixed(2),
        ]),
      ),
      "",
    );
  }
  lines.push("step time (estimate)");
  for (const part of p.time.parts)
    lines.push(`  ${part.name.padEnd(13)} ${pad(part.seconds.toFixed(1), 8)} s  ${part.detail}`);
  lines.push(
    `  ${"total".padEnd(13)} ${pad(p.time.totalSeconds.toFixed(1), 8)} s  perf/mfu/actor ≈ ${p.time.mfuActor.toFixed(3)}`,
    "",
    `assumptions: ${assumptionsText(p)}`,
  );
  for (const note of p.notes) lines.push(`note: ${note}`);
  return lines.join("\n");
}

const sumSeconds = (t: GroupTraffic[]) => t.reduce((x, e) => x + e.seconds, 0);

function assumptionsText(p: Plan): string {
  const a = p.assumptions;
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
  return (
    `training at ${pct(a.trainComputeEfficiency)} of the bf16 peak, prefill ${pct(a.prefillComputeEfficiency)}, decode reads at ${pct(a.hbmEfficiency)} of HBM, ` +
    `collectives at ${pct(a.linkEfficiency)} of the link + ${(a.nvlinkLatencySeconds * 1e6).toFixed(0)} µs (NVLink) / ${(a.networkLatencySeconds * 1e6).toFixed(0)} µs (network) a call, ` +
    `offload at ${pct(a.pcieEfficiency)} of PCIe; no overlap of communication with compute; ${p.cluster.gpu.source}`
  );
}

export function formatSearch(s: SearchResult): string {
  const first = s.ranked[0]?.plan;
  const lines = [
    first
      ? `${first.model.architecture} on ${first.cluster.gpus} × ${first.cluster.gpu.name}: ${s.candidates} layouts tried, ${s.valid} valid, ${s.fitting} fit (${s.elapsedMs} ms); fastest first (estimates):`
      : `no layout fits (${s.candidates} tried)`,
  ];
  s.ranked.forEach(({ plan, why }, i) => {
    lines.push(
      `${i + 1}. ${pad(plan.time.totalSeconds.toFixed(0), 6)} s/step  ${describeChoice(plan)}`,
      `     ${why}`,
    );
  });
  if (first) lines.push(`assumptions: ${assumptionsText(first)}`);
  return lines.join("\n");
}
