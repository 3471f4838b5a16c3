// transformers' Qwen2-VL image processor (Qwen2.5-VL uses it too; its PIL backend): each image
// resized so that both sides are multiples of patch × merge and its area lies within
// [minPixels, maxPixels] (smart resize), rescaled to [0, 1], normalised with the CLIP mean and std,
// and cut into temporal × spatial patches, merge block by merge block. Outputs are the model's
// ImageInputs (pixel_values, image_grid_thw) and the placeholder count of each image.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ImageInputs } from "../native/model.js";
import { decodeImage, type RgbImage } from "./image.js";
import { type ResampleFilter, resizeRgb } from "./resize.js";

export interface ImageProcessorConfig {
  minPixels: number;
  maxPixels: number;
  patchSize: number;
  temporalPatchSize: number;
  mergeSize: number;
  imageMean: [number, number, number];
  imageStd: [number, number, number];
  rescaleFactor: number;
  resample: ResampleFilter;
}

/** The processor's class defaults (Qwen2VLImageProcessor). */
export const qwen2VlDefaults: ImageProcessorConfig = {
  minPixels: 56 * 56,
  maxPixels: 28 * 28 * 1280,
  patchSize: 14,
  temporalPatchSize: 2,
  mergeSize: 2,
  imageMean: [0.48145466, 0.4578275, 0.40821073],
  imageStd: [0.26862954, 0.26130258, 0.27577711],
  rescaleFactor: 1 / 255,
  resample: "bicubic",
};

/**
 * A model folder's preprocessor_config.json over the defaults: min_pixels / max_pixels (or
 * size.shortest_edge / longest_edge), patch_size, temporal_patch_size, merge_size, image_mean,
 * image_std, rescale_factor, resample (2 bilinear, 3 bicubic). No file: the defaults.
 */
export function readImageProcessorConfig(dir: string): ImageProcessorConfig {
  const file = join(dir, "preprocessor_config.json");
  if (!existsSync(file)) return { ...qwen2VlDefaults };
  const raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  return imageProcessorConfig(raw, file);
}

export function imageProcessorConfig(
  raw: Record<string, unknown>,
  where = "preprocessor_config.json",
): ImageProcessorConfig {
  const size = (raw.size ?? {}) as Record<string, unknown>;
  const number = (key: string, value: unknown, fallback: number): number => {
    if (value === undefined || value === null) return fallback;
    if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
      throw new RangeError(`${where}: ${key} must be a positive number, found ${JSON.stringify(value)}`);
    }
    return value;
  };
  const triple = (
    key: string,
    value: unknown,
    fallback: [number, number, number],
  ): [number, number, number] => {
    if (value === undefined || value === null) return fallback;
    if (!Array.isArray(value) || value.length !== 3 || !value.every((v) => typeof v === "number")) {
      throw new RangeError(`${where}: ${key} must be three numbers, found ${JSON.stringify(value)}`);
    }
    return value as [number, number, number];
  };
  const d = qwen2VlDefaults;
  const resample = raw.resample ?? 3;
  if (resample !== 2 && resample !== 3) {
    throw new RangeError(
      `${where}: resample ${JSON.stringify(resample)}; supported: 2 (bilinear), 3 (bicubic)`,
    );
  }
  for (const flag of ["do_resize", "do_rescale", "do_normalize", "do_convert_rgb"]) {
    if (raw[flag] === false) throw new RangeError(`${where}: ${flag}=false is not supported`);
  }
  return {
    minPixels: number("min_pixels", raw.min_pixels ?? size.shortest_edge, d.minPixels),
    maxPixels: number("max_pixels", raw.max_pixels ?? size.longest_edge, d.maxPixels),
    patchSize: number("patch_size", raw.patch_size, d.patchSize),
    temporalPatchSize: number("temporal_patch_size", raw.temporal_patch_size, d.temporalPatchSize),
    mergeSize: number("merge_size", raw.merge_size, d.mergeSize),
    imageMean: triple("image_mean", raw.image_mean, d.imageMean),
    imageStd: triple("image_std", raw.image_std, d.imageStd),
    rescaleFactor: number("rescale_factor", raw.rescale_factor, d.rescaleFactor),
    resample: resample === 2 ? "bilinear" : "bicubic",
  };
}

// Python's round(): halves go to the even neighbour.
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** transformers' smart_resize: [height, width], multiples of factor, area within [minPixels, maxPixels]. */
export function smartResize(
  height: number,
  width: number,
  factor: number,
  minPixels: number,
  maxPixels: number,
): [number, number] {
  if (Math.max(height, width) / Math.min(height, width) > 200) {
    throw new RangeError(
      `image: absolute aspect ratio must be smaller than 200, got ${Math.max(height, width) / Math.min(height, width)}`,
    );
  }
  let h = roundHalfEven(height / factor) * factor;
  let w = roundHalfEven(width / factor) * factor;
  if (h * w > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    h = Math.max(factor, Math.floor(height / beta / factor) * factor);
    w = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (h * w < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    h = Math.ceil((height * beta) / factor) * factor;
    w = Math.ceil((width * beta) / factor) * factor;
  }
  return [h, w];
}

export interface ProcessedImages extends ImageInputs {
  /** Per image: the placeholder tokens it takes in the prompt (t · h · w / merge²). */
  tokens: number[];
  /** Per image: the [height, width] it was resized to. */
  sizes: [number, number][];
}

/** Images (encoded bytes or decoded RGB) → pixel_values and image_grid_thw, as the processor makes them. */
export async function preprocessImages(
  images: readonly (Uint8Array | RgbImage)[],
  config: ImageProcessorConfig = qwen2VlDefaults,
): Promise<ProcessedImages> {
  const decoded = await Promise.all(
    images.map((input, index) =>
      input instanceof Uint8Array ? decodeImage(input, `images[${index}]`) : input,
    ),
  );
  const { patchSize: p, mergeSize: m, temporalPatchSize: t } = config;
  const factor = p * m;
  const mean = config.imageMean.map(Math.fround);
  const std = config.imageStd.map(Math.fround);
  const patchDim = 3 * t * p * p;
  const parts: Float32Array[] = [];
  const grids: number[] = [];
  const tokens: number[] = [];
  const sizes: [number, number][] = [];
  for (const rgb of decoded) {
    const [height, width] = smartResize(rgb.height, rgb.width, factor, config.minPixels, config.maxPixels);
    const resized = resizeRgb(rgb, width, height, config.resample);
    // Rescale in float64 then float32, normalise in float32, as the processor's numpy code does.
    const lut = new Float32Array(256 * 3);
    for (let c = 0; c < 3; c++) {
      for (let v = 0; v < 256; v++) {
        const scaled = Math.fround(v * config.rescaleFactor);
        lut[c * 256 + v] = Math.fround(Math.fround(scaled - (mean[c] ?? 0)) / (std[c] ?? 1));
      }
    }
    const gh = height / p;
    const gw = width / p;
    const out = new Float32Array(gh * gw * patchDim);
    let row = 0;
    for (let bh = 0; bh < gh / m; bh++) {
      for (let bw = 0; bw < gw / m; bw++) {
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < m; j++, row++) {
            const y0 = (bh * m + i) * p;
            const x0 = (bw * m + j) * p;
            let o = row * patchDim;
            for (let c = 0; c < 3; c++) {
              // The one frame is repeated over the temporal patch.
              for (let f = 0; f < t; f++) {
                for (let py = 0; py < p; py++) {
                  const line = ((y0 + py) * width + x0) * 3 + c;
                  for (let px = 0; px < p; px++, o++) {
                    out[o] = lut[c * 256 + (resized.data[line + px * 3] ?? 0)] ?? 0;
                  }
                }
              }
            }
          }
        }
      }
    }
    parts.push(out);
    grids.push(1, gh, gw);
    tokens.push((gh * gw) / (m * m));
    sizes.push([height, width]);
  }
  const pixels = new Float32Array(parts.reduce((n, a) => n + a.length, 0));
  let offset = 0;
  for (const part of parts) {
    pixels.set(part, offset);
    offset += part.length;
  }
  return { pixels, grids: new Int32Array(grids), tokens, sizes };
}
