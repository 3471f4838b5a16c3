// `tiller logprobs` and `tiller generate`: a model folder and a JSONL file in, a JSONL file out.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { checkDevice } from "../native/engine.js";
import { Model } from "../native/model.js";
import { Tokenizer } from "../tokenizer/index.js";
import { tokenIdList } from "../util/token-ids.js";
import { jsonlWriter, progress, readJsonl, tokenField } from "./jsonl.js";

const common = {
  model: { type: "string" },
  input: { type: "string" },
  output: { type: "string" },
  device: { type: "string", default: "cpu" },
  dtype: { type: "string", default: "float32" },
  "batch-size": { type: "string", default: "32" },
} as const;

function required(values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (typeof v !== "string" || v === "") throw new Error(`--${name} is required`);
  return v;
}

function number(
  values: Record<string, unknown>,
  name: string,
  check: (v: number) => boolean,
  allowed: string,
): number {
  const v = Number(values[name]);
  if (!Number.isFinite(v) || !check(v))
    throw new Error(`--${name}: ${JSON.stringify(values[name])} must be ${allowed}`);
  return v;
}

function modelDtype(value: unknown): "float32" | "bfloat16" {
  if (value !== "float32" && value !== "bfloat16") {
    throw new Error(`--dtype: ${JSON.stringify(value)} is not allowed; use float32 or bfloat16`);
  }
  return value;
}

function readConfig(dir: string): { vocab_size?: number; eos_token_id?: number | (number | null)[] | null } {
  const path = join(dir, "config.json");
  if (!existsSync(path)) throw new Error(`--model: ${dir} has no config.json`);
  return JSON.parse(readFileSync(path, "utf8"));
}

function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

function packed(sequences: number[][]) {
  const cu = [0];
  for (const s of sequences) cu.push((cu.at(-1) ?? 0) + s.length);
  return { tokens: Int32Array.from(sequences.flat()), cuSeqlens: Int32Array.from(cu) };
}

export async function logprobsCommand(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { ...common, temperature: { type: "string", default: "1" } },
  });
  const dir = required(values, "model");
  const input = required(values, "input");
  const output = required(values, "output");
  const temperature = number(values, "temperature", (v) => v > 0, "a number > 0");
  const batch = number(values, "batch-size", (v) => Number.isInteger(v) && v > 0, "a positive integer");
  const device = checkDevice(values.device, "--device");
  const dtype = modelDtype(values.dtype);
  const vocab = readConfig(dir).vocab_size ?? Number.MAX_SAFE_INTEGER;
  const records = await readJsonl(input);
  const sequences = records.map(({ line, value }) => tokenField(value, `${input}:${line}`, vocab, 2));
  const model = await Model.load(dir, { device, dtype });
  const out = jsonlWriter(output);
  const report = progress("logprobs", sequences.length);
  try {
    let done = 0;
    for (const group of chunks(sequences, batch)) {
      const { tokens, cuSeqlens } = packed(group);
      const r = await model.logprobs(tokens, cuSeqlens, temperature);
      let offset = 0;
      for (const s of group) {
        const n = s.length - 1;
        out.write({
          logprobs: Array.from(r.logprobs.subarray(offset, offset + n)),
          entropy: Array.from(r.entropy.subarray(offset, offset + n)),
        });
        offset += n;
      }
      done += group.length;
      report(done);
    }
  } finally {
    model.dispose();
    await out.close();
  }
}

export async function generateCommand(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      ...common,
      "max-new-tokens": { type: "string" },
      temperature: { type: "string", default: "0" },
      "top-p": { type: "string", default: "1" },
      "top-k": { type: "string", default: "0" },
      seed: { type: "string", default: "0" },
      chat: { type: "boolean", default: false },
    },
  });
  const dir = required(values, "model");
  const input = required(values, "input");
  const output = required(values, "output");
  const maxNewTokens = number(
    values,
    "max-new-tokens",
    (v) => Number.isInteger(v) && v > 0,
    "a positive integer",
  );
  const temperature = number(values, "temperature", (v) => v >= 0, "a number ≥ 0 (0 is greedy)");
  const topP = number(values, "top-p", (v) => v > 0 && v <= 1, "in (0, 1]");
  const topK = number(values, "top-k", (v) => Number.isInteger(v) && v >= 0, "an integer ≥ 0 (0 keeps all)");
  const seed = number(values, "seed", (v) => Number.isSafeInteger(v) && v >= 0, "an integer ≥ 0");
  const batch = number(values, "batch-size", (v) => Number.isInteger(v) && v > 0, "a positive integer");
  const device = checkDevice(values.device, "--device");
  const dtype = modelDtype(values.dtype);
  const config = readConfig(dir);
  const vocab = config.vocab_size ?? Number.MAX_SAFE_INTEGER;
  const tokenizer = existsSync(join(dir, "tokenizer.json")) ? Tokenizer.fromFolder(dir) : undefined;
  const records = await readJsonl(input);
  const prompts = records.map(({ line, value }) => {
    const where = `${input}:${line}`;
    const prompt = (value as { prompt?: unknown } | null)?.prompt;
    if (prompt === undefined) return tokenField(value, where, vocab, 1);
    if (typeof prompt !== "string") throw new Error(`${where}: prompt: expected a string`);
    if (!tokenizer)
      throw new Error(`${where}: prompt: text needs a tokenizer, and ${dir} has no tokenizer.json`);
    return values.chat
      ? tokenizer.encodeChat([{ role: "user", content: prompt }], { addGenerationPrompt: true })
      : tokenizer.encode(prompt);
  });
  const stopTokenIds = [
    ...new Set([
      ...(tokenizer?.eosTokenIds ?? []),
      ...tokenIdList(config.eos_token_id, `${dir}/config.json: eos_token_id`),
    ]),
  ];
  const model = await Model.load(dir, { device, dtype });
  const out = jsonlWriter(output);
  const report = progress("generate", prompts.length);
  try {
    let done = 0;
    let generated = 0;
    for (const group of chunks(prompts, batch)) {
      const gens = await model.generate(
        group.map((p) => Int32Array.from(p)),
        { maxNewTokens, temperature, topP, topK, seed: seed + done, stopTokenIds },
      );
      for (const g of gens) {
        const tokens = Array.from(g.tokens);
        generated += tokens.length;
        out.write({
          tokens,
          logprobs: Array.from(g.logprobs),
          text: tokenizer ? tokenizer.decode(tokens, { skipSpecialTokens: true }) : null,
          finish_reason: g.finishReason,
        });
      }
      done += group.length;
      report(done, `${generated} tokens`);
    }
  } finally {
    model.dispose();
    await out.close();
  }
}
