// Validation metrics as verl computes them (trainer/ppo/metric_utils.py process_validation_metrics
// and ray_trainer._val_metrics_update): per data source and per prompt, mean@N and std@N of every
// numeric reward field, and bootstrapped best@n / worst@n / maj@n (n = 2, 4, …, N) with their mean
// and std over 1000 resamples, averaged over prompts; named `val-core/<source>/<var>/<metric>` for
// the headline numbers and `val-aux/...` for the rest. The resampling reproduces numpy's legacy
// generator (np.random.seed(42); np.random.choice), so the numbers are verl's to the last digit.

/** MT19937 as numpy's legacy RandomState runs it (init_genrand seeding, genrand_int32 draws). */
class Mt19937 {
  readonly #state = new Uint32Array(624);
  #index = 624;

  constructor(seed: number) {
    const mt = this.#state;
    mt[0] = seed >>> 0;
    for (let i = 1; i < 624; i++) {
      const prev = (mt[i - 1] as number) ^ ((mt[i - 1] as number) >>> 30);
      // 1812433253 · prev + i, modulo 2³², in two 16-bit halves to stay exact.
      mt[i] =
        (((((prev & 0xffff0000) >>> 16) * 1812433253) << 16) + (prev & 0x0000ffff) * 1812433253 + i) >>> 0;
    }
  }

  nextUint32(): number {
    const mt = this.#state;
    if (this.#index >= 624) {
      for (let k = 0; k < 624; k++) {
        const y = ((mt[k] as number) & 0x80000000) | ((mt[(k + 1) % 624] as number) & 0x7fffffff);
        mt[k] = (mt[(k + 397) % 624] as number) ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.#index = 0;
    }
    let y = mt[this.#index++] as number;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}

/**
 * `np.random.seed(seed); np.random.choice(n, size=(rows, cols), replace=True)`, row-major: numpy's
 * legacy bounded integers, a draw masked to the next power of two and rejected above n − 1.
 */
export function numpyLegacyChoice(n: number, rows: number, cols: number, seed: number): Int32Array {
  if (!Number.isInteger(n) || n < 1 || n > 2 ** 31)
    throw new RangeError(`n: ${n} must be an integer in [1, 2^31]`);
  const rng = new Mt19937(seed);
  const out = new Int32Array(rows * cols);
  const max = n - 1;
  if (max === 0) return out;
  let mask = max;
  mask |= mask >>> 1;
  mask |= mask >>> 2;
  mask |= mask >>> 4;
  mask |= mask >>> 8;
  mask |= mask >>> 16;
  for (let i = 0; i < out.length; i++) {
    let v: number;
    do v = (rng.nextUint32() & mask) >>> 0;
    while (v > max);
    out[i] = v;
  }
  return out;
}

/** verl's gen_ns: 2, 4, 8, … below n, then n itself (none for n ≤ 1). */
export function subsetSizes(n: number): number[] {
  if (n <= 1) return [];
  const ns: number[] = [];
  for (let k = 2; k < n; k *= 2) ns.push(k);
  ns.push(n);
  return ns;
}

const BOOTSTRAPS = 1000;
const SEED = 42;

/** np.mean and np.std (population, ddof 0) of numbers. */
function meanStd(values: ArrayLike<number>): { mean: number; std: number } {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i] as number;
  const mean = sum / values.length;
  let squares = 0;
  for (let i = 0; i < values.length; i++) squares += ((values[i] as number) - mean) ** 2;
  return { mean, std: Math.sqrt(squares / values.length) };
}

/** Votes by prediction: the first of the most frequent predictions, and the value of its first sample. */
function majorityValue(
  values: readonly number[],
  preds: readonly string[],
  idx: Int32Array,
  from: number,
  to: number,
): number {
  const counts = new Map<string, { count: number; value: number }>();
  for (let k = from; k < to; k++) {
    const i = idx[k] as number;
    const p = preds[i] as string;
    const c = counts.get(p);
    if (c) c.count++;
    else counts.set(p, { count: 1, value: values[i] as number });
  }
  let best: { count: number; value: number } | undefined;
  for (const c of counts.values()) if (!best || c.count > best.count) best = c;
  return (best as { count: number; value: number }).value;
}

/** One prompt's metrics of one variable: mean@N, std@N, best@n/…, worst@n/…, maj@n/… . */
function promptMetrics(values: number[], preds: string[] | undefined): Record<string, number> {
  const n = values.length;
  const metric: Record<string, number> = { [`mean@${n}`]: meanStd(values).mean };
  if (n <= 1) return metric;
  metric[`std@${n}`] = meanStd(values).std;
  for (const size of subsetSizes(n)) {
    const idx = numpyLegacyChoice(n, BOOTSTRAPS, size, SEED);
    const best = new Float64Array(BOOTSTRAPS);
    const worst = new Float64Array(BOOTSTRAPS);
    const majority = preds ? new Float64Array(BOOTSTRAPS) : undefined;
    for (let b = 0; b < BOOTSTRAPS; b++) {
      let hi = Number.NEGATIVE_INFINITY;
      let lo = Number.POSITIVE_INFINITY;
      for (let k = b * size; k < (b + 1) * size; k++) {
        const v = values[idx[k] as number] as number;
        if (v > hi) hi = v;
        if (v < lo) lo = v;
      }
      best[b] = hi;
      worst[b] = lo;
      if (majority && preds) majority[b] = majorityValue(values, preds, idx, b * size, (b + 1) * size);
    }
    const bs = meanStd(best);
    const ws = meanStd(worst);
    metric[`best@${size}/mean`] = bs.mean;
    metric[`best@${size}/std`] = bs.std;
    metric[`worst@${size}/mean`] = ws.mean;
    metric[`worst@${size}/std`] = ws.std;
    if (majority) {
      const ms = meanStd(majority);
      metric[`maj@${size}/mean`] = ms.mean;
      metric[`maj@${size}/std`] = ms.std;
    }
  }
  return metric;
}

/** Per response: its data source, its prompt's id, and its reward fields (numbers, or strings such as `pred`). */
export interface ValidationSamples {
  dataSources: readonly string[];
  uids: readonly string[];
  /** Field name → one value per response; verl's "reward" (the score) and the reward function's extras. */
  infos: Record<string, readonly (number | boolean | string | null | undefined)[]>;
}

/**
 * verl's process_validation_metrics: data source → variable → metric → the mean over prompts of
 * each prompt's metric. Strings are not variables; `pred` (when every response of a prompt has one)
 * gives the maj@n votes. Missing values (null / undefined) are left out of a prompt's list.
 */
export function processValidationMetrics(
  samples: ValidationSamples,
): Map<string, Map<string, Map<string, number>>> {
  const { dataSources, uids, infos } = samples;
  const names = Object.keys(infos);
  for (const name of names) {
    if ((infos[name] as unknown[]).length !== dataSources.length) {
      throw new RangeError(
        `infos.${name} has ${(infos[name] as unknown[]).length} values for ${dataSources.length} responses`,
      );
    }
  }
  if (uids.length !== dataSources.length) {
    throw new RangeError(`uids has ${uids.length} entries for ${dataSources.length} responses`);
  }
  // source → uid → response indices, in first-appearance order (as verl's defaultdicts).
  const bySource = new Map<string, Map<string, number[]>>();
  dataSources.forEach((source, i) => {
    let byUid = bySource.get(source);
    if (!byUid) {
      byUid = new Map();
      bySource.set(source, byUid);
    }
    const uid = uids[i] as string;
    const members = byUid.get(uid);
    if (members) members.push(i);
    else byUid.set(uid, [i]);
  });
  const out = new Map<string, Map<string, Map<string, number>>>();
  for (const [source, byUid] of bySource) {
    const sums = new Map<string, Map<string, number[]>>();
    for (const members of byUid.values()) {
      const predsRaw = infos.pred ? members.map((i) => infos.pred?.[i]) : undefined;
      for (const name of names) {
        const raw = members.map((i) => infos[name]?.[i]).filter((v) => v !== null && v !== undefined);
        if (raw.length === 0 || typeof raw[0] === "string") continue;
        const values = raw.map(Number);
        const preds =
          predsRaw &&
          predsRaw.length === values.length &&
          predsRaw.every((p) => p !== null && p !== undefined)
            ? predsRaw.map(String)
            : undefined;
        let byMetric = sums.get(name);
        if (!byMetric) {
          byMetric = new Map();
          sums.set(name, byMetric);
        }
        for (const [metric, v] of Object.entries(promptMetrics(values, preds))) {
          const list = byMetric.get(metric);
          if (list) list.push(v);
          else byMetric.set(metric, [v]);
        }
      }
    }
    const perVar = new Map<string, Map<string, number>>();
    for (const [name, byMetric] of sums) {
      perVar.set(name, new Map([...byMetric].map(([metric, list]) => [metric, meanStd(list).mean])));
    }
    out.set(source, perVar);
  }
  return out;
}

/**
 * verl's metric names: `val-core/<source>/<var>/<metric>` for mean@N, maj@N/… and best@N/… of the
 * core variable (`acc` when the reward reports it, else `reward`) at the largest N, `val-aux/...`
 * for every other.
 */
export function validationMetrics(samples: ValidationSamples): Record<string, number> {
  const metrics: Record<string, number> = {};
  for (const [source, perVar] of processValidationMetrics(samples)) {
    const core = perVar.has("acc") ? "acc" : "reward";
    for (const [name, byMetric] of perVar) {
      const nMax = Math.max(
        ...[...byMetric.keys()].map((m) => Number.parseInt(m.split("@").at(-1) as string, 10)),
      );
      for (const [metric, value] of byMetric) {
        const headline =
          name === core &&
          (metric.startsWith("mean") || metric.startsWith("maj") || metric.startsWith("best")) &&
          metric.includes(`@${nMax}`);
        metrics[`${headline ? "val-core" : "val-aux"}/${source}/${name}/${metric}`] = value;
      }
    }
  }
  return metrics;
}
