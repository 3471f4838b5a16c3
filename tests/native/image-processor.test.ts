// Image preprocessing against transformers' Qwen2-VL image processor (PIL backend): odd sizes and
// aspect ratios, RGBA / grey / palette PNGs, downscales forced by max_pixels, upscales forced by
// min_pixels, another patch size. PNG inputs and Pillow-decoded JPEG pixels must give the same
// pixel_values (within 1e-5) and grids, and JPEG bytes decode to Pillow's pixels.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  decodeImage,
  imageProcessorConfig,
  preprocessImages,
  resizeRgb,
  smartResize,
} from "../../src/index.js";
import { maxAbsDiff } from "../helpers/parity.js";
import { runPython, tempDir } from "../helpers/python.js";

interface Case {
  setting: string;
  kwargs: Record<string, unknown>;
  files: string[];
  fromRgb?: string[];
  sizes?: [number, number][];
  grids: number[][];
  shape: number[];
  offset: number;
}

const dir = tempDir("image-processor");
let cases: Case[] = [];
let blob: Buffer;
before(() => {
  runPython("image_processor_reference.py", [dir.path]);
  cases = JSON.parse(readFileSync(join(dir.path, "cases.json"), "utf8")) as Case[];
  blob = readFileSync(join(dir.path, "pixels.bin"));
});
after(() => dir.cleanup());

function expected(c: Case): Float32Array {
  const n = c.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  new Uint8Array(out.buffer).set(blob.subarray(c.offset, c.offset + n * 4));
  return out;
}

test("pixel values and grids equal the processor's for PNGs and Pillow-decoded JPEGs", async () => {
  const lossless = cases.filter((c) => c.fromRgb || !c.files.some((f) => f.endsWith(".jpg")));
  assert.ok(lossless.length >= 16);
  let worst = 0;
  for (const c of lossless) {
    const config = imageProcessorConfig(c.kwargs);
    const inputs = c.fromRgb
      ? c.fromRgb.map((file, i) => {
          const [height, width] = c.sizes?.[i] ?? [0, 0];
          return { width, height, data: new Uint8Array(readFileSync(join(dir.path, file))) };
        })
      : c.files.map((f) => new Uint8Array(readFileSync(join(dir.path, f))));
    const out = await preprocessImages(inputs, config);
    const where = `${c.setting} ${c.files.join(",")}${c.fromRgb ? " (Pillow's RGB)" : ""}`;
    assert.deepEqual(Array.from(out.grids), c.grids.flat(), `${where}: grids`);
    const diff = maxAbsDiff(out.pixels, expected(c));
    worst = Math.max(worst, diff);
    assert.ok(diff <= 1e-5, `${where}: pixel values off by ${diff}`);
    const merge = (config.mergeSize ?? 2) ** 2;
    assert.deepEqual(
      out.tokens,
      c.grids.map(([t, h, w]) => ((t ?? 0) * (h ?? 0) * (w ?? 0)) / merge),
    );
  }
  console.log(`preprocessing: ${lossless.length} cases, max |ours - transformers| = ${worst}`);
});

test("JPEG bytes decode to Pillow's pixels, and process to the processor's values", async () => {
  for (const name of ["odd", "big"]) {
    const ours = await decodeImage(new Uint8Array(readFileSync(join(dir.path, `${name}.jpg`))));
    const pillow = new Uint8Array(readFileSync(join(dir.path, `${name}.rgb`)));
    assert.equal(maxAbsDiff(ours.data, pillow), 0, `${name}.jpg: decoded pixels differ from Pillow's`);
  }
  const jpegs = cases.filter((c) => !c.fromRgb && c.files.some((f) => f.endsWith(".jpg")));
  assert.ok(jpegs.length >= 4);
  for (const c of jpegs) {
    const out = await preprocessImages(
      c.files.map((f) => new Uint8Array(readFileSync(join(dir.path, f)))),
      imageProcessorConfig(c.kwargs),
    );
    assert.deepEqual(Array.from(out.grids), c.grids.flat(), `${c.setting}: grids`);
    const diff = maxAbsDiff(out.pixels, expected(c));
    assert.ok(diff <= 1e-5, `${c.setting} ${c.files.join(",")}: pixel values off by ${diff}`);
  }
});

test("smart resize rounds halves to even, clamps to the pixel bounds, refuses extreme ratios", async () => {
  assert.deepEqual(smartResize(42, 70, 28, 56 * 56, 28 * 28 * 1280), [56, 56]); // 1.5 -> 2, 2.5 -> 2
  assert.deepEqual(smartResize(10, 10, 28, 56 * 56, 28 * 28 * 1280), [56, 56]);
  assert.deepEqual(smartResize(2000, 3000, 28, 56 * 56, 28 * 28 * 16), [84, 112]);
  assert.throws(
    () => smartResize(1, 300, 28, 56 * 56, 28 * 28 * 1280),
    /aspect ratio must be smaller than 200/,
  );
  const same = { width: 3, height: 2, data: new Uint8Array(18) };
  assert.equal(resizeRgb(same, 3, 2), same);
  await assert.rejects(
    decodeImage(new Uint8Array([1, 2, 3, 4])),
    /not a PNG or JPEG \(starts with 01 02 03 04\)/,
  );
});
