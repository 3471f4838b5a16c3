// The tokenizer layer: HF tokenizers and chat templates in TypeScript.
export {
  type ChatContentPart,
  type ChatMessage,
  type ChatRole,
  type ChatTemplateOptions,
  chatRoles,
} from "./chat.js";
export { type DecodeFn, DecodeStream } from "./stream.js";
export { type DecodeOptions, type EncodeOptions, Tokenizer, type TokenizerFiles } from "./tokenizer.js";
