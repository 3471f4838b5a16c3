// One training scenario run the same way on a single device (in the test process) and on every
// rank of a mesh (tests/helpers/parallel-rank.ts), so that the two can be compared: logprobs and
// entropy of a packed batch of uneven sequences, policy-loss gradients (entropy bonus on, so the
// entropy's backward is exercised), three AdamW updates with clipping, greedy generation.
import type { Model, NamedHostTensor, PolicyMicroBatch } from "../../src/index.js";

/** Sequences of uneven lengths (not multiples of 2 or 4, so sequence parallelism pads). */
export function scenarioSequences(vocab: number): number[][] {
  const lengths = [7, 5, 9, 6, 4, 8];
  let state = 11;
  return lengths.map((n) =>
    Array.from({ length: n }, () => {
      state = (state * 1103515245 + 12345) % 2147483648;
      return 2 + (state % (vocab - 2));
    }),
  );
}

function pack(sequences: number[][]): { tokens: Int32Array; cu: Int32Array } {
  const cu = [0];
  for (const s of sequences) cu.push((cu[cu.length - 1] ?? 0) + s.length);
  return { tokens: Int32Array.from(sequences.flat()), cu: Int32Array.from(cu) };
}

export interface ScenarioResult {
  logprobs: number[];
  entropy: number[];
  gradients: Record<string, number[]>;
  gradNorms: number[];
  pgLoss: number[];
  parameters: Record<string, number[]>;
  generated: number[][];
  /** ScenarioOptions.offloadOptimizer: per update, the bytes moved and where memory() saw the state. */
  offloaded?: { moved: number; device: number; host: number }[];
}

function byName(list: NamedHostTensor[]): Record<string, number[]> {
  return Object.fromEntries(list.map((t) => [t.name, Array.from(t.data as Float32Array)]));
}

export interface ScenarioOptions {
  /**
   * Cut the sequences into this many micro-batches instead of pairs: expert parallelism needs every
   * rank to run as many forwards as the others (the dispatch is collective), so a multiple of the
   * data ranks.
   */
  microBatches?: number;
  /** Greedy generation at the end (default true). */
  generate?: boolean;
  /**
   * AdamW's epsilon (the engine's 1e-8 by default). A parameter whose gradient is as small as the
   * summation-order noise between layouts (≈ 1e-7 here) gets an update of either sign of up to lr
   * when epsilon is tiny: its first Adam step is lr·g/(|g| + eps), whose slope in g is lr/eps.
   * A larger epsilon bounds that (1e-5: 1e-7 of gradient noise moves a parameter by at most 1e-5),
   * so that the parameters after three updates can be compared at 1e-5 in models with many such
   * parameters, without choosing seeds. A sharding bug still moves many parameters by ≈ lr.
   */
  adamEps?: number;
  /**
   * MoE models: every forward replays a forced routing (routedExperts) made from the token ids
   * alone, so one device and every layout force the same experts on the same tokens; tokens with
   * id % 5 == 0 route as the router does (rows of -1).
   */
  forcedRouting?: boolean;
  /**
   * All of a rank's micro-batches of an update in one policySteps call (a pipeline runs them 1F1B)
   * instead of one policyStep each.
   */
  batched?: boolean;
  /**
   * The optimizer state goes to host memory after each update (optimizerStep brings it back for the
   * next); the result then records the bytes memory() reported on the host and on the device.
   */
  offloadOptimizer?: boolean;
}

/** [tokens, moe layers, top_k] expert ids for `tokens` (see ScenarioOptions.forcedRouting). */
export function forcedRouting(model: Model, tokens: Int32Array): Int32Array {
  const { layers, experts, topK } = model.moe;
  const out = new Int32Array(tokens.length * layers * topK);
  tokens.forEach((t, i) => {
    for (let l = 0; l < layers; l++) {
      for (let k = 0; k < topK; k++) {
        out[(i * layers + l) * topK + k] = t % 5 === 0 ? -1 : (t * 3 + l + k) % experts;
      }
    }
  });
  return out;
}

/**
 * dataRank/dataSize: this rank's share of the micro-batches (micro-batch i runs on data rank
 * i % dataSize); the counts are the whole mini-batch's, so summed gradients equal one device's.
 */
export async function runScenario(
  model: Model,
  vocab: number,
  dataRank = 0,
  dataSize = 1,
  options: ScenarioOptions = {},
): Promise<ScenarioResult> {
  const sequences = scenarioSequences(vocab);
  const all = pack(sequences);
  const routing = (tokens: Int32Array) => (options.forcedRouting ? forcedRouting(model, tokens) : undefined);
  const { logprobs, entropy } = await model.logprobs(all.tokens, all.cu, 1, 1024, routing(all.tokens));
  model.initOptimizer({
    lr: 1e-3,
    weightDecay: 0.01,
    maxGradNorm: 0.5,
    ...(options.adamEps !== undefined ? { eps: options.adamEps } : {}),
  });
  // Micro-batches of two sequences (or `microBatches` contiguous shares); the last 3 predicted
  // tokens of each sequence count.
  const micro: number[][][] = [];
  if (options.microBatches) {
    const k = options.microBatches;
    for (let m = 0; m < k; m++) {
      micro.push(
        sequences.slice(Math.round((m * sequences.length) / k), Math.round(((m + 1) * sequences.length) / k)),
      );
    }
  } else for (let i = 0; i < sequences.length; i += 2) micro.push(sequences.slice(i, i + 2));
  const counts = { tokens: 3 * sequences.length, sequences: sequences.length };
  const result: ScenarioResult = {
    logprobs: Array.from(logprobs),
    entropy: Array.from(entropy),
    gradients: {},
    gradNorms: [],
    pgLoss: [],
    parameters: {},
    generated: [],
  };
  for (let update = 0; update < 3; update++) {
    let pgLoss = 0;
    const steps: PolicyMicroBatch[] = [];
    for (let m = 0; m < micro.length; m++) {
      if (m % dataSize !== dataRank) continue;
      const batch = micro[m] ?? [];
      const packed = pack(batch);
      const predicted = packed.tokens.length - batch.length;
      const mask = new Float32Array(predicted);
      const advantages = new Float32Array(predicted);
      const old = new Float32Array(predicted);
      // On a pipeline only the last stage gets logprobs (and computes the loss); the others' inputs go unused.
      const current = await model.logprobs(packed.tokens, packed.cu, 1, 1024, routing(packed.tokens));
      let row = 0;
      batch.forEach((seq, s) => {
        const n = seq.length - 1;
        for (let j = 0; j < n; j++) {
          mask[row + j] = j >= n - 3 ? 1 : 0;
          advantages[row + j] = ((m * 2 + s) % 3) - 1 + 0.25;
          // Old logprobs a little off the current ones: ratios near 1, some past the clip.
          old[row + j] = (current.logprobs[row + j] ?? 0) + 0.3 * Math.sin(7 * (row + j) + update);
        }
        row += n;
      });
      const routed = routing(packed.tokens);
      steps.push({
        tokens: packed.tokens,
        cuSeqlens: packed.cu,
        perToken: { oldLogprobs: old, advantages, mask },
        ...(routed ? { routedExperts: routed } : {}),
      });
    }
    const loss = { entropyCoeff: 0.01, clipRatioLow: 0.2, clipRatioHigh: 0.28 };
    if (options.batched) {
      const { results } = await model.policySteps(steps, counts, loss, 1, 1024);
      for (const r of results) pgLoss += r.metrics.pgLoss;
    } else {
      for (const mb of steps) {
        const step = await model.policyStep(
          mb.tokens,
          mb.cuSeqlens,
          mb.perToken,
          counts,
          loss,
          1,
          1024,
          mb.routedExperts,
        );
        pgLoss += step.metrics.pgLoss;
      }
    }
    result.pgLoss.push(pgLoss);
    if (update === 0) result.gradients = byName(await model.gather("gradients"));
    const opt = await model.optimizerStep();
    result.gradNorms.push(opt.gradNorm);
    if (options.offloadOptimizer) {
      const moved = await model.offloadOptimizer();
      const m = model.memory();
      result.offloaded = [
        ...(result.offloaded ?? []),
        { moved: moved.bytes, device: m.optimizer, host: m.optimizerHost },
      ];
    }
  }
  result.parameters = byName(await model.gather("parameters"));
  if (options.generate === false) return result;
  const prompts = [Int32Array.from(sequences[0] ?? []), Int32Array.from(sequences[2] ?? [])];
  const generations = await model.generate(prompts, { maxNewTokens: 8 });
  result.generated = generations.map((g) => Array.from(g.tokens));
  return result;
}
