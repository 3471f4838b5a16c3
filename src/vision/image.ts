// Images as 8-bit RGB pixel arrays: decoding PNG (pngjs) and JPEG (sharp: libjpeg-turbo's decoder,
// as Pillow's) bytes, with the conversions Pillow's `Image.convert("RGB")` makes (alpha dropped,
// grey and palettes expanded), which is what transformers' processors see.
import { PNG } from "pngjs";
import sharp from "sharp";

/** Row-major RGB, 3 bytes a pixel: data[(y * width + x) * 3 + channel]. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

const pngSignature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

export function imageFormat(bytes: Uint8Array): "png" | "jpeg" | undefined {
  if (pngSignature.every((b, i) => bytes[i] === b)) return "png";
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "jpeg";
  return undefined;
}

/**
 * PNG or JPEG bytes → RGB. 16-bit PNG samples keep their high byte (as Pillow reads 16-bit RGB);
 * other formats are refused naming what was found. EXIF orientation is not applied (nor by Pillow).
 */
export async function decodeImage(bytes: Uint8Array, what = "image"): Promise<RgbImage> {
  if (!(bytes instanceof Uint8Array))
    throw new TypeError(`${what}: expected the encoded bytes (a Uint8Array)`);
  const format = imageFormat(bytes);
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (format === "png") {
    // The bit depth, from the IHDR chunk that follows the signature: 16-bit samples are read
    // unscaled, so that they are cut as Pillow cuts them; lower depths scale to 0..255 as in Pillow.
    const sixteen = bytes[24] === 16;
    const png = PNG.sync.read(buffer, { skipRescale: sixteen });
    const source = sixteen
      ? new Uint16Array(png.data.buffer, png.data.byteOffset, png.data.length / 2)
      : png.data;
    const out = new Uint8Array(png.width * png.height * 3);
    for (let i = 0, j = 0; j < out.length; i += 4, j += 3) {
      for (let c = 0; c < 3; c++) {
        const v = source[i + c] ?? 0;
        out[j + c] = sixteen ? v >> 8 : v;
      }
    }
    return { width: png.width, height: png.height, data: out };
  }
  if (format === "jpeg") {
    const { data, info } = await sharp(buffer).raw().toBuffer({ resolveWithObject: true });
    const out = new Uint8Array(info.width * info.height * 3);
    // Grey JPEGs come back with one channel: replicated, as Pillow's L -> RGB does.
    const step = info.channels;
    for (let i = 0, j = 0; j < out.length; i += step, j += 3) {
      for (let c = 0; c < 3; c++) out[j + c] = data[i + (step >= 3 ? c : 0)] ?? 0;
    }
    return { width: info.width, height: info.height, data: out };
  }
  const head = Array.from(bytes.subarray(0, 4), (b) => b.toString(16).padStart(2, "0")).join(" ");
  throw new TypeError(`${what}: not a PNG or JPEG (starts with ${head || "nothing"})`);
}

/** RGB → PNG bytes (8-bit RGBA, opaque): for writing images into data and reports. */
export function encodePng(image: RgbImage): Uint8Array {
  const png = new PNG({ width: image.width, height: image.height });
  for (let i = 0, j = 0; i < image.data.length; i += 3, j += 4) {
    png.data[j] = image.data[i] ?? 0;
    png.data[j + 1] = image.data[i + 1] ?? 0;
    png.data[j + 2] = image.data[i + 2] ?? 0;
    png.data[j + 3] = 255;
  }
  return new Uint8Array(PNG.sync.write(png));
}
