// Communication of one RL step per rank and group: how many calls of which collective move how many
// bytes. Payload bytes are counted as the engine's mesh.traffic() counts them (all-reduce: the
// tensor; all-gather: the gathered output; reduce-scatter and all-to-all: the input), seconds by
// the ring algorithms' bus bytes over the group's link (NVLink inside a node, the network across).
import type { Assumptions } from "./config.js";
import type { GpuType } from "./gpus.js";

export type Collective = "allReduce" | "allGather" | "reduceScatter" | "allToAll" | "sendRecv";

export interface GroupTraffic {
  /** tensor, sequence (SP), expert, expertTensor, context, pipeline, data, expertData, rolloutTensor, reshard, offload. */
  group: string;
  collective: Collective;
  /** Ranks in the group. */
  ranks: number;
  /** Whether the group's ranks sit on more than one node. */
  acrossNodes: boolean;
  calls: number;
  /** Per rank per step, as the engine counts them. */
  payloadBytes: number;
  /** Estimated seconds (bus bytes ÷ link bandwidth × efficiency, plus a latency per call). */
  seconds: number;
  /** What moves: "attention and MLP outputs, forward and backward", … */
  what: string;
}

/** Whether a group of `ranks` ranks `stride` apart in the world's order spans nodes. */
export function spansNodes(ranks: number, stride: number, gpusPerNode: number): boolean {
  return ranks > 1 && ranks * stride > gpusPerNode;
}

/** Seconds of `calls` collectives moving `payloadBytes` in all (per rank) over a group. */
export function collectiveSeconds(
  collective: Collective,
  ranks: number,
  acrossNodes: boolean,
  calls: number,
  payloadBytes: number,
  gpu: GpuType,
  a: Assumptions,
): number {
  if (ranks <= 1 || calls === 0) return 0;
  const bandwidth = (acrossNodes ? gpu.networkBytesPerSecond : gpu.nvlinkBytesPerSecond) * a.linkEfficiency;
  const latency = acrossNodes ? a.networkLatencySeconds : a.nvlinkLatencySeconds;
  const share = (ranks - 1) / ranks;
  const bus =
    collective === "allReduce"
      ? 2 * share * payloadBytes
      : collective === "sendRecv"
        ? payloadBytes
        : share * payloadBytes;
  return bus / bandwidth + calls * latency;
}

export function traffic(entry: Omit<GroupTraffic, "seconds">, gpu: GpuType, a: Assumptions): GroupTraffic {
  return {
    ...entry,
    seconds: collectiveSeconds(
      entry.collective,
      entry.ranks,
      entry.acrossNodes,
      entry.calls,
      entry.payloadBytes,
      gpu,
      a,
    ),
  };
}
