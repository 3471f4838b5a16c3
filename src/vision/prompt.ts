// Prompts with images, as verl's multimodal datasets and transformers' Qwen2-VL processor build
// them: `<image>` in a message's text becomes an image part of the chat template's content list,
// and each image placeholder the template writes is repeated once per merged patch of its image.
import sharp from "sharp";
import type { ChatContentPart } from "../tokenizer/chat.js";
import { imageFormat } from "./image.js";
import { type ImageProcessorConfig, smartResize } from "./qwen2-vl.js";

/** "a <image> b" → [{text "a "}, {image}, {text " b"}] (empty text pieces dropped), as verl splits it. */
export function imagePromptParts(content: string): ChatContentPart[] {
  return content
    .split(/(<image>)/)
    .filter((piece) => piece !== "")
    .map((piece) => (piece === "<image>" ? { type: "image" } : { type: "text", text: piece }));
}

/** How many `<image>` placeholders the text holds. */
export function countImagePlaceholders(content: string): number {
  return content.split("<image>").length - 1;
}

/** Repeats the i-th `pad` of the rendered prompt tokens[i] times (the processor's expansion). */
export function expandImagePads(text: string, tokens: readonly number[], pad: string): string {
  const pieces = text.split(pad);
  if (pieces.length - 1 !== tokens.length) {
    throw new Error(
      `the chat template wrote ${pieces.length - 1} image placeholders (${pad}) for ${tokens.length} images`,
    );
  }
  return pieces.reduce(
    (out, piece, i) => (i === 0 ? piece : out + pad.repeat(tokens[i - 1] ?? 0) + piece),
    "",
  );
}

/** [width, height] from the PNG header or JPEG metadata, without decoding the pixels. */
export async function imageSize(bytes: Uint8Array, what = "image"): Promise<[number, number]> {
  const format = imageFormat(bytes);
  if (format === "png" && bytes.length >= 24) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return [view.getUint32(16), view.getUint32(20)];
  }
  if (format === "jpeg") {
    const meta = await sharp(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)).metadata();
    if (meta.width && meta.height) return [meta.width, meta.height];
  }
  throw new TypeError(`${what}: not a PNG or JPEG`);
}

/** The placeholder tokens each image takes after the processor resizes it. */
export async function imageTokenCounts(
  images: readonly Uint8Array[],
  config: ImageProcessorConfig,
  what = "images",
): Promise<number[]> {
  const factor = config.patchSize * config.mergeSize;
  return Promise.all(
    images.map(async (bytes, i) => {
      const [width, height] = await imageSize(bytes, `${what}[${i}]`);
      const [h, w] = smartResize(height, width, factor, config.minPixels, config.maxPixels);
      return ((h / config.patchSize) * (w / config.patchSize)) / config.mergeSize ** 2;
    }),
  );
}

/** A data URL for showing an encoded image in HTML (PNG or JPEG only, so nothing else is embedded). */
export function imageDataUrl(bytes: Uint8Array): string {
  const format = imageFormat(bytes);
  if (!format) throw new TypeError("imageDataUrl: not a PNG or JPEG");
  return `data:image/${format};base64,${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64")}`;
}
