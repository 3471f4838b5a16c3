// Comparisons the parity tests share: reading the reference scripts' tensor dumps and measuring
// the differences between ours and HF's.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { NamedHostTensor } from "../../src/index.js";

/** Reads `<stem>.json` (name, shape, byte offset per tensor) and `<stem>.bin` (float32 data). */
export function readTensors(dir: string, stem: string): NamedHostTensor[] {
  const manifest = JSON.parse(readFileSync(join(dir, `${stem}.json`), "utf8")) as {
    name: string;
    shape: number[];
    offset: number;
  }[];
  const bytes = readFileSync(join(dir, `${stem}.bin`));
  return manifest.map(({ name, shape, offset }) => {
    const numel = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(numel);
    new Uint8Array(data.buffer).set(bytes.subarray(offset, offset + numel * 4));
    return { name, shape, dtype: "float32", data };
  });
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] ?? 0) - (b[i] ?? 0)));
  return m;
}

/** ‖a − ref‖ / ‖ref‖. */
export function relativeDiff(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < ref.length; i++) {
    diff += ((a[i] ?? 0) - (ref[i] ?? 0)) ** 2;
    norm += (ref[i] ?? 0) ** 2;
  }
  return Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-30);
}
