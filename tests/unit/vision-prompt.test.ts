// Prompts with images without tensors: verl's `<image>` placeholders split into content parts, the
// processor's placeholder expansion, the forms an `images` cell takes, image sizes from headers.
import assert from "node:assert/strict";
import { test } from "node:test";
import { toPromptRow } from "../../src/rl/data.js";
import { concatImages } from "../../src/rl/images.js";
import {
  countImagePlaceholders,
  encodePng,
  expandImagePads,
  imageDataUrl,
  imagePromptParts,
  imageSize,
} from "../../src/vision/index.js";

const png = encodePng({ width: 5, height: 3, data: new Uint8Array(45).fill(7) });

test("<image> splits a message into image and text parts, empty text dropped, as verl does", () => {
  assert.deepEqual(imagePromptParts("<image>What is x?"), [
    { type: "image" },
    { type: "text", text: "What is x?" },
  ]);
  assert.deepEqual(imagePromptParts("a <image> b <image>"), [
    { type: "text", text: "a " },
    { type: "image" },
    { type: "text", text: " b " },
    { type: "image" },
  ]);
  assert.deepEqual(imagePromptParts("no images"), [{ type: "text", text: "no images" }]);
  assert.equal(countImagePlaceholders("a <image> b <image>"), 2);
});

test("each placeholder is repeated by its image's token count; a count mismatch is an error", () => {
  assert.equal(expandImagePads("x<P>y<P>z", [2, 3], "<P>"), "x<P><P>y<P><P><P>z");
  assert.throws(
    () => expandImagePads("x<P>y", [1, 2], "<P>"),
    /wrote 1 image placeholders \(<P>\) for 2 images/,
  );
});

test("an images cell may hold bytes, {bytes, path} structs or base64 (JSONL); other values name the field", () => {
  const row = (images: unknown) =>
    toPromptRow(
      {
        prompt: [{ role: "user", content: "<image>?" }],
        data_source: "s",
        reward_model: { ground_truth: "r" },
        images,
      },
      "f.parquet",
      4,
    );
  assert.deepEqual(row([png]).images, [png]);
  assert.deepEqual(row([{ bytes: png, path: null }]).images, [png]);
  assert.deepEqual(row([{ bytes: Buffer.from(png).toString("base64") }]).images, [png]);
  assert.equal(row([]).images, undefined);
  assert.equal(row(null).images, undefined);
  assert.throws(() => row("x"), /f.parquet: row 4: field "images" must be a list of encoded images/);
  assert.throws(() => row([3]), /field "images\[0\]" must be encoded bytes or \{bytes\}/);
});

test("sizes come from the PNG header; data URLs only for PNG and JPEG; images concatenate in order", async () => {
  assert.deepEqual(await imageSize(png), [5, 3]);
  await assert.rejects(imageSize(new Uint8Array([1, 2, 3])), /not a PNG or JPEG/);
  assert.match(imageDataUrl(png), /^data:image\/png;base64,iVBORw0KGgo/);
  assert.throws(() => imageDataUrl(new Uint8Array([60, 115, 118, 103])), /not a PNG or JPEG/);
  const a = { pixels: new Float32Array([1, 2]), grids: new Int32Array([1, 1, 2]) };
  const b = { pixels: new Float32Array([3]), grids: new Int32Array([1, 1, 1]) };
  assert.equal(concatImages([undefined, undefined]), undefined);
  const both = concatImages([a, undefined, b]);
  assert.deepEqual(Array.from(both?.pixels ?? []), [1, 2, 3]);
  assert.deepEqual(Array.from(both?.grids ?? []), [1, 1, 2, 1, 1, 1]);
});
