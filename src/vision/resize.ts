// Resampling of 8-bit RGB images exactly as Pillow's `Image.resize` does it (libImaging/Resample.c):
// a separable convolution whose support widens with the downscale factor (antialiasing), weights
// normalised per output pixel and rounded to 22-bit fixed point, each pass rounded and clipped to
// 8 bits. Every step is reproduced in the same order, so the bytes are identical. The order of the
// passes is Pillow 13's: vertical first when the height shrinks by more than twice as many pixels as
// the width does (earlier Pillows always run the horizontal pass first).
import type { RgbImage } from "./image.js";

export type ResampleFilter = "bilinear" | "bicubic";

interface Filter {
  weight: (x: number) => number;
  support: number;
}

const filters: Record<ResampleFilter, Filter> = {
  bilinear: {
    support: 1,
    weight: (x) => {
      const a = Math.abs(x);
      return a < 1 ? 1 - a : 0;
    },
  },
  // Keys' cubic convolution with a = -0.5, written as Pillow evaluates it.
  bicubic: {
    support: 2,
    weight: (x) => {
      const a = -0.5;
      const t = Math.abs(x);
      if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
      if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
      return 0;
    },
  },
};

const precisionBits = 32 - 8 - 2;

interface Coefficients {
  /** Per output index: first input index and how many inputs it reads. */
  first: Int32Array;
  count: Int32Array;
  /** [outSize, taps] fixed-point weights. */
  weights: Int32Array;
  taps: number;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the whole input range (box 0..inSize).
function coefficients(inSize: number, outSize: number, filter: Filter): Coefficients {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * taps);
  const k = new Float64Array(taps);
  for (let xx = 0; xx < outSize; xx++) {
    const center = 0 + (xx + 0.5) * scale;
    const ss = 1 / filterScale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.weight((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? (k[x] ?? 0) / ww : (k[x] ?? 0);
      weights[xx * taps + x] =
        w < 0 ? Math.trunc(-0.5 + w * (1 << precisionBits)) : Math.trunc(0.5 + w * (1 << precisionBits));
    }
    first[xx] = xmin;
    count[xx] = xmax;
  }
  return { first, count, weights, taps };
}

// Pillow's clip8: the sum shifted down (floor) and clamped to a byte.
function clip8(sum: number): number {
  const v = sum >> precisionBits;
  return Math.min(Math.max(v, 0), 255);
}

function horizontal(image: RgbImage, width: number, filter: Filter): RgbImage {
  const c = coefficients(image.width, width, filter);
  const out = new Uint8Array(width * image.height * 3);
  const src = image.data;
  for (let y = 0; y < image.height; y++) {
    const row = y * image.width * 3;
    for (let xx = 0; xx < width; xx++) {
      const start = c.first[xx] ?? 0;
      const n = c.count[xx] ?? 0;
      let s0 = 1 << (precisionBits - 1);
      let s1 = s0;
      let s2 = s0;
      for (let x = 0; x < n; x++) {
        const w = c.weights[xx * c.taps + x] ?? 0;
        const p = row + (start + x) * 3;
        s0 += (src[p] ?? 0) * w;
        s1 += (src[p + 1] ?? 0) * w;
        s2 += (src[p + 2] ?? 0) * w;
      }
      const o = (y * width + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return { width, height: image.height, data: out };
}

function vertical(image: RgbImage, height: number, filter: Filter): RgbImage {
  const c = coefficients(image.height, height, filter);
  const out = new Uint8Array(image.width * height * 3);
  const src = image.data;
  const stride = image.width * 3;
  for (let yy = 0; yy < height; yy++) {
    const start = c.first[yy] ?? 0;
    const n = c.count[yy] ?? 0;
    for (let x = 0; x < image.width; x++) {
      let s0 = 1 << (precisionBits - 1);
      let s1 = s0;
      let s2 = s0;
      for (let y = 0; y < n; y++) {
        const w = c.weights[yy * c.taps + y] ?? 0;
        const p = (start + y) * stride + x * 3;
        s0 += (src[p] ?? 0) * w;
        s1 += (src[p + 1] ?? 0) * w;
        s2 += (src[p + 2] ?? 0) * w;
      }
      const o = (yy * image.width + x) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return { width: image.width, height, data: out };
}

/** The image resampled to width × height; the same image (not a copy) when the size is unchanged. */
export function resizeRgb(
  image: RgbImage,
  width: number,
  height: number,
  filter: ResampleFilter = "bicubic",
): RgbImage {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`resize: ${width} × ${height} must be positive integers`);
  }
  const f = filters[filter];
  if (!f) throw new RangeError(`resize: filter ${JSON.stringify(filter)}; allowed: bilinear, bicubic`);
  let out = image;
  const verticalFirst = height < image.height && image.height - height > 2 * (image.width - width);
  if (verticalFirst) {
    out = vertical(out, height, f);
    if (width !== image.width) out = horizontal(out, width, f);
    return out;
  }
  if (width !== image.width) out = horizontal(out, width, f);
  if (height !== image.height) out = vertical(out, height, f);
  return out;
}
