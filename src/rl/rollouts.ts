// A step's rollouts as an Arrow table, one row per response: texts, token ids and per-token
// floats as list columns, scalars beside them. The notebook's inspector and exports read this.
import {
  Field,
  Float32,
  Float64,
  Int32,
  List,
  Table,
  Utf8,
  type Vector,
  vectorFromArray,
} from "apache-arrow";
import { imageDataUrl } from "../vision/prompt.js";

/** What rolloutsTable reads of each response (the controller's Sample has these fields). */
export interface RolloutRecord {
  /** Group id: responses to one prompt of one generation round share it. */
  uid: string;
  round: number;
  prompt: Int32Array;
  response: Int32Array;
  rolloutLogprobs: Float32Array;
  finishReason: "stop" | "length";
  dataSource: string;
  groundTruth: string;
  promptText?: string;
  responseText?: string;
  /** The verifier's score, then the score after overlong shaping (what advantages use). */
  score?: number;
  shapedScore?: number;
  acc?: number;
  pred?: string;
  rewardStatus?: string;
  /** Per response token: under the actor before this step's updates, its entropy, the reference's. */
  oldLogprobs?: Float32Array;
  entropy?: Float32Array;
  refLogprobs?: Float32Array;
  /** Per response token. */
  advantages?: Float32Array;
  /** Vision-language prompts: the prompt's encoded images (PNG / JPEG), in placeholder order. */
  images?: readonly Uint8Array[];
}

const listOf = (type: Int32 | Float32) => new List(new Field("item", type, true));

/**
 * Columns: step, uid (group), round, prompt, response, prompt_tokens, response_tokens,
 * rollout_logprobs, old_logprobs, logprob_diff (rollout − old, per token), entropy, ref_logprobs,
 * advantages (per token), advantage (the response's, first token), score, reward (after shaping),
 * acc, pred, prompt_length, response_length, finish_reason, data_source, ground_truth, reward_status,
 * and, when some prompt has images, images (each prompt's as data: URLs). Values a stage has not
 * computed yet are null.
 */
export function rolloutsTable(batch: { step: number; samples: readonly RolloutRecord[] }): Table {
  const s = batch.samples;
  const f64 = (pick: (r: RolloutRecord) => number | undefined) =>
    vectorFromArray(
      s.map((r) => pick(r) ?? null),
      new Float64(),
    );
  const str = (pick: (r: RolloutRecord) => string | undefined) =>
    vectorFromArray(
      s.map((r) => pick(r) ?? null),
      new Utf8(),
    );
  const floats = (pick: (r: RolloutRecord) => Float32Array | undefined) =>
    vectorFromArray(
      s.map((r) => pick(r) ?? null),
      listOf(new Float32()),
    );
  const withImages = s.some((r) => r.images && r.images.length > 0);
  const columns: Record<string, Vector> = {
    step: vectorFromArray(
      s.map(() => batch.step),
      new Int32(),
    ),
    uid: str((r) => r.uid),
    round: vectorFromArray(
      s.map((r) => r.round),
      new Int32(),
    ),
    prompt: str((r) => r.promptText),
    response: str((r) => r.responseText),
    prompt_tokens: vectorFromArray(
      s.map((r) => r.prompt),
      listOf(new Int32()),
    ),
    response_tokens: vectorFromArray(
      s.map((r) => r.response),
      listOf(new Int32()),
    ),
    rollout_logprobs: floats((r) => r.rolloutLogprobs),
    old_logprobs: floats((r) => r.oldLogprobs),
    logprob_diff: floats((r) =>
      r.oldLogprobs
        ? r.rolloutLogprobs.map((v, t) => v - ((r.oldLogprobs as Float32Array)[t] as number))
        : undefined,
    ),
    entropy: floats((r) => r.entropy),
    ref_logprobs: floats((r) => r.refLogprobs),
    advantages: floats((r) => r.advantages),
    advantage: f64((r) => (r.advantages && r.advantages.length > 0 ? r.advantages[0] : undefined)),
    score: f64((r) => r.score),
    reward: f64((r) => r.shapedScore),
    acc: f64((r) => r.acc),
    pred: str((r) => r.pred),
    prompt_length: vectorFromArray(
      s.map((r) => r.prompt.length),
      new Int32(),
    ),
    response_length: vectorFromArray(
      s.map((r) => r.response.length),
      new Int32(),
    ),
    finish_reason: str((r) => r.finishReason),
    data_source: str((r) => r.dataSource),
    ground_truth: str((r) => r.groundTruth),
    reward_status: str((r) => r.rewardStatus),
  };
  if (withImages) {
    columns.images = vectorFromArray(
      s.map((r) => (r.images ? r.images.map(imageDataUrl) : null)),
      new List(new Field("item", new Utf8(), true)),
    );
  }
  return new Table(columns);
}

/** One row per token: which response (row, uid), where (position, response 0/1), and its hidden vector. */
export function activationsTable(columns: {
  row: number[];
  uid: string[];
  position: number[];
  token: number[];
  response: number[];
  values: Float32Array[];
}): Table {
  return new Table({
    row: vectorFromArray(columns.row, new Int32()),
    uid: vectorFromArray(columns.uid, new Utf8()),
    position: vectorFromArray(columns.position, new Int32()),
    token: vectorFromArray(columns.token, new Int32()),
    response: vectorFromArray(columns.response, new Int32()),
    values: vectorFromArray(columns.values, listOf(new Float32())),
  });
}
