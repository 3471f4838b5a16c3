// DAPO's batch shaping: dynamic sampling (keep only prompts whose responses disagree, generate
// more rounds until a step's worth is collected) and the overlong reward shaping. Mirrors the
// filter_groups loop in recipe/dapo/dapo_ray_trainer.py and the overlong buffer in
// verl/workers/reward_manager/dapo.py.
import { checkSameLength, type GroupIds, responsesByGroup } from "./groups.js";

export interface GroupFilterResult {
  /** Ids of the groups kept, in first-appearance order. */
  keptGroupIds: (string | number)[];
  /** Response indices of each kept group, parallel to `keptGroupIds`. */
  keptResponses: number[][];
  keptGroupCount: number;
  droppedGroupCount: number;
}

/**
 * Keeps the groups whose metric (score or accuracy per response) has a non-zero spread: all
 * right or all wrong gives zero GRPO advantage and no gradient. A group of one response is kept,
 * as verl does (`std > 0 or len == 1`).
 */
export function filterGroupsBySpread(metric: Float64Array, groups: GroupIds): GroupFilterResult {
  checkSameLength("groups", groups, metric.length, "metric");
  const keptGroupIds: (string | number)[] = [];
  const keptResponses: number[][] = [];
  let droppedGroupCount = 0;
  for (const [id, members] of responsesByGroup(groups)) {
    // Any two different values means std > 0; comparing avoids rounding in a computed std.
    const spread = members.some((i) => metric[i] !== metric[members[0]]);
    if (spread || members.length === 1) {
      keptGroupIds.push(id);
      keptResponses.push(members);
    } else {
      droppedGroupCount++;
    }
  }
  return { keptGroupIds, keptResponses, keptGroupCount: keptGroupIds.length, droppedGroupCount };
}

export interface DynamicSamplingOptions {
  /** Groups (prompts, each with all its responses) a training step needs. */
  promptsPerStep: number;
  /**
   * Generation rounds allowed before giving up (verl's `max_num_gen_batches`). Use `Infinity` for
   * no bound; verl's `0` for that is a deliberate difference, to keep 0 from meaning "endless".
   */
  maxGenerationRounds: number;
}

/** A kept group: which round produced it and which responses of that round belong to it. */
export interface CollectedGroup {
  round: number;
  groupId: string | number;
  responseIndices: number[];
}

/** Thrown when `maxGenerationRounds` rounds did not yield `promptsPerStep` groups. */
export class DynamicSamplingError extends Error {
  constructor(
    readonly groupsCollected: number,
    readonly promptsPerStep: number,
    readonly rounds: number,
  ) {
    super(
      `dynamic sampling collected ${groupsCollected} of ${promptsPerStep} groups with a non-zero ` +
        `spread after ${rounds} generation rounds (maxGenerationRounds = ${rounds}); the prompts ` +
        "may be too easy or too hard for the model: raise maxGenerationRounds, or filter the data",
    );
    this.name = "DynamicSamplingError";
  }
}

/**
 * Accumulates kept groups over generation rounds until a step has `promptsPerStep` of them.
 * Usage: `while (!acc.isComplete) acc.addRound(metric, groups)`; then `acc.groups()`.
 */
export class DynamicSamplingBatch {
  readonly promptsPerStep: number;
  readonly maxGenerationRounds: number;
  #collected: CollectedGroup[] = [];
  #rounds = 0;
  #droppedGroupCount = 0;

  constructor(options: DynamicSamplingOptions) {
    const { promptsPerStep, maxGenerationRounds } = options;
    if (!Number.isInteger(promptsPerStep) || promptsPerStep < 1) {
      throw new RangeError(`promptsPerStep must be a positive integer, got ${promptsPerStep}`);
    }
    if (
      !(maxGenerationRounds >= 1) ||
      !(Number.isInteger(maxGenerationRounds) || maxGenerationRounds === Infinity)
    ) {
      throw new RangeError(
        `maxGenerationRounds must be a positive integer or Infinity, got ${maxGenerationRounds}`,
      );
    }
    this.promptsPerStep = promptsPerStep;
    this.maxGenerationRounds = maxGenerationRounds;
  }

  get rounds(): number {
    return this.#rounds;
  }
  get groupsCollected(): number {
    return this.#collected.length;
  }
  get droppedGroupCount(): number {
    return this.#droppedGroupCount;
  }
  get isComplete(): boolean {
    return this.#collected.length >= this.promptsPerStep;
  }

  /**
   * Filters one round's responses and keeps its groups with spread. Throws
   * `DynamicSamplingError` when this was the last allowed round and the step is still short.
   */
  addRound(metric: Float64Array, groups: GroupIds): GroupFilterResult {
    if (this.isComplete) {
      throw new Error("the batch is already complete; call groups() instead of generating more");
    }
    const round = this.#rounds++;
    const result = filterGroupsBySpread(metric, groups);
    this.#droppedGroupCount += result.droppedGroupCount;
    result.keptGroupIds.forEach((groupId, g) => {
      this.#collected.push({ round, groupId, responseIndices: result.keptResponses[g] });
    });
    if (!this.isComplete && this.#rounds >= this.maxGenerationRounds) {
      throw new DynamicSamplingError(this.#collected.length, this.promptsPerStep, this.#rounds);
    }
    return result;
  }

  /** Exactly `promptsPerStep` groups, the earliest collected; extras are discarded as in verl. */
  groups(): CollectedGroup[] {
    if (!this.isComplete) {
      throw new Error(
        `only ${this.#collected.length} of ${this.promptsPerStep} groups collected; call addRound with another generation round`,
      );
    }
    return this.#collected.slice(0, this.promptsPerStep);
  }
}

export interface OverlongShapingOptions {
  /** The generation limit (verl's `max_response_length`), in tokens. */
  maxResponseTokens: number;
  /** The last tokens before the limit in which the penalty ramps up (`overlong_buffer.len`). */
  bufferTokens: number;
  /** Penalty at the limit itself (`overlong_buffer.penalty_factor`). */
  penaltyFactor: number;
}

/**
 * DAPO's soft overlong punishment, added to a response's score: 0 up to
 * `maxResponseTokens − bufferTokens` tokens, then falling linearly to `−penaltyFactor` at
 * `maxResponseTokens`: `min(−(length − (max − buffer)) / buffer · factor, 0)`.
 */
export function overlongPenalty(responseTokens: number, options: OverlongShapingOptions): number {
  const { maxResponseTokens, bufferTokens, penaltyFactor } = options;
  if (!(bufferTokens > 0 && bufferTokens <= maxResponseTokens)) {
    throw new RangeError(
      `bufferTokens must be in (0, maxResponseTokens = ${maxResponseTokens}], got ${bufferTokens}`,
    );
  }
  const exceedTokens = responseTokens - (maxResponseTokens - bufferTokens);
  return exceedTokens <= 0 ? 0 : (-exceedTokens / bufferTokens) * penaltyFactor;
}

/** `scores[i] + overlongPenalty(responseLengths[i])` for each response. */
export function shapeOverlongScores(
  scores: Float64Array,
  responseLengths: Int32Array,
  options: OverlongShapingOptions,
): Float64Array {
  checkSameLength("responseLengths", responseLengths, scores.length);
  return scores.map((s, i) => s + overlongPenalty(responseLengths[i], options));
}
