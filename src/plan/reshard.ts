// Weight resharding from the training layout to the rollout layout: for every rank, the bytes of
// its rollout slices that its training slices do not already hold (each region has to arrive
// once; a rank keeps what it has). Slices are boxes over each tensor's dimensions.
import type { RolloutLayout, TrainLayout } from "./layout.js";
import type { ModelSpec, PlanTensor } from "./model.js";

type Box = [number, number][];

/** [begin, end) of `index`'s share of `extent` split `ranks` ways, by `heads` units (fewer heads than ranks: one head each). */
function share(extent: number, ranks: number, index: number, heads?: number): [number, number] {
  if (ranks === 1) return [0, extent];
  const units = heads ?? extent;
  if (units >= ranks) {
    const per = extent / ranks;
    return [index * per, (index + 1) * per];
  }
  const unit = extent / units;
  const head = Math.floor(index / (ranks / units));
  return [head * unit, (head + 1) * unit];
}

function box(
  t: PlanTensor,
  tensor: number,
  tensorIndex: number,
  expert: number,
  expertIndex: number,
  inner: number,
  innerIndex: number,
): Box {
  const out: Box = t.shape.map((n) => [0, n]);
  if (t.split === "expert") {
    out[0] = share(t.shape[0] as number, expert, expertIndex);
    const d = t.innerDim ?? 1;
    out[d] = share(t.shape[d] as number, inner, innerIndex);
  } else if (t.split !== "replicated") {
    const d = t.split === "row" ? 1 : 0;
    out[d] = share(t.shape[d] as number, tensor, tensorIndex, t.heads);
  }
  return out;
}

const volume = (b: Box) => b.reduce((v, [s, e]) => v * Math.max(0, e - s), 1);
const intersect = (a: Box, b: Box): Box =>
  a.map(([s, e], i) => [
    Math.max(s, (b[i] as [number, number])[0]),
    Math.min(e, (b[i] as [number, number])[1]),
  ]);

/** The largest number of bytes any rank receives to build its rollout slices (bytesPerElement: the rollout dtype's). */
export function reshardBytes(
  spec: ModelSpec,
  train: TrainLayout,
  rollout: RolloutLayout,
  bytesPerElement: number,
): number {
  const { tensor: T, context: C, data: D, expert: E, expertTensor: ET } = train;
  const stageRanks = T * C * D;
  const last = train.stages.length - 1;
  const world = stageRanks * train.pipeline;
  let worst = 0;
  const seen = new Set<string>();
  for (let r = 0; r < world; r++) {
    const t = r % T;
    const stage = Math.floor(r / stageRanks);
    const [begin, end] = train.stages[stage] as [number, number];
    const inStage = r % stageRanks;
    const et = inStage % ET;
    const e = Math.floor(inStage / ET) % E;
    const rt = r % rollout.tensor;
    // Ranks with the same coordinates in both layouts miss the same bytes.
    const key = `${stage}/${t}/${e}/${et}/${rt}`;
    if (seen.has(key)) continue;
    seen.add(key);
    let missing = 0;
    for (const x of spec.tensors) {
      const bytes = x.buffer ? 4 : bytesPerElement;
      const want =
        x.split === "expert"
          ? rollout.expert
            ? box(x, 1, 0, rollout.tensor, rt, 1, 0)
            : box(x, 1, 0, 1, 0, rollout.tensor, rt)
          : box(x, rollout.tensor, rt, 1, 0, 1, 0);
      const held =
        (x.layer >= begin && x.layer < end) ||
        (x.layer < 0 && stage === 0) ||
        (x.layer >= spec.layers && stage === last);
      const have = held ? volume(intersect(want, box(x, T, t, E, e, ET, et))) : 0;
      missing += (volume(want) - have) * bytes;
    }
    worst = Math.max(worst, missing);
  }
  return worst;
}
