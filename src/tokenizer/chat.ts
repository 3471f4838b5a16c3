// Chat messages and their rendering through a model's Jinja chat template, with the same context
// names that transformers' `apply_chat_template` passes, so one template renders identically
// (@huggingface/jinja itself provides the helpers transformers adds: raise_exception, strftime_now).
import { Template } from "@huggingface/jinja";

export const chatRoles = ["system", "user", "assistant", "tool"] as const;
export type ChatRole = (typeof chatRoles)[number];

/** A part of a multimodal message (transformers' content list): text, or where an image goes. */
export type ChatContentPart = { type: "text"; text: string } | { type: "image" };

/** One chat turn, in the shape HF chat templates read (snake_case fields are the template's names). */
export interface ChatMessage {
  role: ChatRole;
  /** Text, or (vision-language templates) a list of text and image parts. */
  content: string | ChatContentPart[];
  /** Assistant reasoning kept apart from `content`; Qwen3's template wraps it in <think>. */
  reasoning_content?: string;
  /** Assistant tool calls: `{ function: { name, arguments } }`, as in the OpenAI message format. */
  tool_calls?: unknown[];
}

export interface ChatTemplateOptions {
  /** End with the header of an assistant turn, so the model writes the reply next. */
  addGenerationPrompt?: boolean;
  /** JSON-schema tool descriptions, passed to the template as `tools`. */
  tools?: Record<string, unknown>[];
  /** Qwen3-style switch; left undefined, the template's default applies (thinking on for Qwen3). */
  enableThinking?: boolean;
}

/** Throws, naming the message and field, unless every message has a known role and string content. */
export function validateMessages(messages: readonly ChatMessage[]): void {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new Error("chat messages: expected a non-empty array of {role, content}");
  }
  messages.forEach((m, i) => {
    if (m === null || typeof m !== "object") throw new Error(`messages[${i}]: expected {role, content}`);
    if (!chatRoles.includes(m.role)) {
      throw new Error(`messages[${i}].role: ${JSON.stringify(m.role)} is not one of ${chatRoles.join(", ")}`);
    }
    const parts = Array.isArray(m.content) ? (m.content as unknown[]) : undefined;
    if (parts) {
      parts.forEach((p, j) => {
        const part = p as { type?: unknown; text?: unknown } | null;
        const ok =
          part !== null &&
          typeof part === "object" &&
          (part.type === "image" || (part.type === "text" && typeof part.text === "string"));
        if (!ok)
          throw new Error(`messages[${i}].content[${j}]: expected {type: "text", text} or {type: "image"}`);
      });
    } else if (typeof m.content !== "string") {
      throw new Error(
        `messages[${i}].content: expected a string, got ${m.content === null ? "null" : typeof m.content}`,
      );
    }
  });
}

/** A parsed chat template; parsing once matters because templates are re-rendered per prompt. */
export class ChatTemplate {
  private readonly template: Template;

  /** `specialTokens` are the names HF exposes to templates: bos_token, eos_token, pad_token, … */
  constructor(
    readonly source: string,
    private readonly specialTokens: Record<string, string>,
  ) {
    this.template = new Template(source);
  }

  render(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    validateMessages(messages);
    const context: Record<string, unknown> = {
      ...this.specialTokens,
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? false,
    };
    // Absent rather than null: templates test `tools` for truthiness and `enable_thinking is defined`.
    if (options.tools !== undefined) context.tools = options.tools;
    if (options.enableThinking !== undefined) context.enable_thinking = options.enableThinking;
    return this.template.render(context);
  }
}
