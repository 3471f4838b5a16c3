// Prompts with images for vision-language models (Qwen2.5-VL) in the RL loop: verl's multimodal
// rows (`<image>` placeholders + encoded `images`) rendered through the folder's chat template with
// each image's placeholder repeated per merged patch, the images preprocessed per step, and the
// per-sequence images of a packed batch concatenated in token order.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ImageInputs } from "../native/model.js";
import type { Tokenizer } from "../tokenizer/tokenizer.js";
import {
  countImagePlaceholders,
  expandImagePads,
  imagePromptParts,
  imageTokenCounts,
} from "../vision/prompt.js";
import { type ImageProcessorConfig, preprocessImages, readImageProcessorConfig } from "../vision/qwen2-vl.js";
import type { ChatMessage, PromptItem, PromptRow } from "./data.js";

/** What a model folder says about images: whether it takes them, its processor, its placeholder. */
export interface ImageSupport {
  config: ImageProcessorConfig;
  /** The placeholder token's text (config.image_token_id in the tokenizer), e.g. "<|image_pad|>". */
  pad: string;
}

/** The folder's image support, or undefined for a text-only model (no vision_config). */
export function imageSupport(modelPath: string, tokenizer: Tokenizer): ImageSupport | undefined {
  const file = join(modelPath, "config.json");
  if (!existsSync(file)) return undefined;
  const config = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  if (config.vision_config === undefined) return undefined;
  const id = typeof config.image_token_id === "number" ? config.image_token_id : 151655;
  const pad = tokenizer.idToToken(id);
  if (pad === undefined)
    throw new Error(`${file}: image_token_id ${id} is not in the tokenizer's vocabulary`);
  return { config: readImageProcessorConfig(modelPath), pad };
}

/**
 * Renders and tokenizes prompts, images included: `prepare(rows)` reads each image's size (once) to
 * know its placeholder count, then `encode(messages, row)` is a PromptDataset's applyChatTemplate.
 */
export class PromptEncoder {
  readonly #counts = new Map<PromptRow, number[]>();

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly chatTemplate: boolean,
    readonly images: ImageSupport | undefined,
  ) {}

  async prepare(rows: readonly PromptRow[], field: string): Promise<void> {
    for (const row of rows) {
      if (!row.images) continue;
      const where = `${row.file}: row ${row.row}`;
      if (!this.images) {
        throw new Error(
          `${where}: field "images": the model takes no images (its config.json has no vision_config)`,
        );
      }
      if (!this.chatTemplate)
        throw new Error(`${field}: rows with images need the chat template (data.chatTemplate)`);
      const placeholders = row.prompt.reduce((n, m) => n + countImagePlaceholders(m.content), 0);
      if (placeholders !== row.images.length) {
        throw new Error(
          `${where}: field "prompt": ${placeholders} <image> placeholders for ${row.images.length} images`,
        );
      }
      this.#counts.set(row, await imageTokenCounts(row.images, this.images.config, `${where}: images`));
    }
  }

  encode(messages: ChatMessage[], row: PromptRow): number[] {
    const counts = this.#counts.get(row);
    const tokenizer = this.tokenizer;
    if (!this.chatTemplate) {
      return tokenizer.encode(messages.map((m) => m.content).join("\n"), { addSpecialTokens: false });
    }
    const roles = messages as Parameters<Tokenizer["applyChatTemplate"]>[0];
    if (!counts || !this.images) return tokenizer.encodeChat(roles, { addGenerationPrompt: true });
    const parts = roles.map((m) => ({ ...m, content: imagePromptParts(m.content as string) }));
    const text = tokenizer.applyChatTemplate(parts, { addGenerationPrompt: true });
    return tokenizer.encode(expandImagePads(text, counts, this.images.pad), { addSpecialTokens: false });
  }
}

/** Each prompt's images preprocessed (pixel_values, grids), undefined where a prompt has none. */
export async function promptImages(
  items: readonly PromptItem[],
  support: ImageSupport | undefined,
): Promise<(ImageInputs | undefined)[]> {
  if (!support) return items.map(() => undefined);
  return Promise.all(
    items.map(async (item) => {
      if (!item.row.images) return undefined;
      const { pixels, grids } = await preprocessImages(item.row.images, support.config);
      return { pixels, grids };
    }),
  );
}

/** The images of sequences packed in this order, concatenated; undefined when none has any. */
export function concatImages(list: readonly (ImageInputs | undefined)[]): ImageInputs | undefined {
  const present = list.filter((x): x is ImageInputs => x !== undefined);
  if (present.length === 0) return undefined;
  const pixels = new Float32Array(present.reduce((n, x) => n + x.pixels.length, 0));
  const grids = new Int32Array(present.reduce((n, x) => n + x.grids.length, 0));
  let p = 0;
  let g = 0;
  for (const x of present) {
    pixels.set(x.pixels, p);
    grids.set(x.grids, g);
    p += x.pixels.length;
    g += x.grids.length;
  }
  return { pixels, grids };
}
