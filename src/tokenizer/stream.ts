// Incremental detokenization for streaming views of a rollout: text comes out only once the bytes
// of a character are complete, and the pieces concatenate to the full decode.

/** The decode a stream needs: ids → text, as the owning tokenizer does it. */
export type DecodeFn = (ids: readonly number[]) => string;

/**
 * Feeds token ids one (or a few) at a time; `push` returns the newly completed text.
 *
 * Byte-level BPE splits a character's UTF-8 bytes across tokens, so decoding a token alone can give
 * U+FFFD. We decode a window that starts at the previous emit point (`prefix`) and hold text back
 * while it ends in U+FFFD; decoding with the previous piece as context also keeps decoders that
 * look at neighbours (Metaspace's leading space) consistent with a full decode.
 */
export class DecodeStream {
  // ids from the start of the previously emitted piece; older ids are no longer needed.
  private window: number[] = [];
  // how many ids of `window` were already turned into emitted text.
  private readCount = 0;
  private prefixText = "";

  constructor(private readonly decode: DecodeFn) {}

  /** Adds ids; returns the text they complete ("" while a character is still partial). */
  push(...ids: number[]): string {
    this.window.push(...ids);
    const text = this.decode(this.window);
    if (text.length <= this.prefixText.length || text.endsWith("\uFFFD")) return "";
    return this.emit(text);
  }

  /** Ends the stream: returns whatever is held back, even an incomplete character (as U+FFFD). */
  flush(): string {
    const text = this.decode(this.window);
    const rest = text.length > this.prefixText.length ? this.emit(text) : "";
    this.window = [];
    this.readCount = 0;
    this.prefixText = "";
    return rest;
  }

  private emit(text: string): string {
    const piece = text.slice(this.prefixText.length);
    // The ids just emitted become the context for the next window.
    this.window = this.window.slice(this.readCount);
    this.readCount = this.window.length;
    this.prefixText = this.decode(this.window);
    return piece;
  }
}
