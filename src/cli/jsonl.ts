// JSON Lines in and out for the CLI: read records with their line numbers (errors name
// `file:line`), write records one per line through a stream.
import { createReadStream, createWriteStream, existsSync } from "node:fs";
import { createInterface } from "node:readline";

export interface Line<T> {
  line: number;
  value: T;
}

/** All non-blank lines of a JSONL file, parsed; a bad line throws with file:line and the reason. */
export async function readJsonl(path: string): Promise<Line<unknown>[]> {
  if (!existsSync(path)) throw new Error(`--input: ${path} does not exist`);
  const out: Line<unknown>[] = [];
  let line = 0;
  for await (const text of createInterface({
    input: createReadStream(path),
    crlfDelay: Number.POSITIVE_INFINITY,
  })) {
    line++;
    if (text.trim() === "") continue;
    try {
      out.push({ line, value: JSON.parse(text) });
    } catch (error) {
      throw new Error(`${path}:${line}: not JSON (${(error as Error).message})`);
    }
  }
  return out;
}

/** Token ids from a record's `tokens` field: a non-empty array of integers in [0, vocabSize). */
export function tokenField(record: unknown, where: string, vocabSize: number, minLength: number): number[] {
  const tokens = (record as { tokens?: unknown } | null)?.tokens;
  if (!Array.isArray(tokens)) throw new Error(`${where}: tokens: expected an array of token ids`);
  if (tokens.length < minLength) {
    throw new Error(
      `${where}: tokens: needs at least ${minLength} token${minLength > 1 ? "s" : ""}, found ${tokens.length}`,
    );
  }
  tokens.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize) {
      throw new Error(`${where}: tokens[${i}]: ${JSON.stringify(t)} is not a token id in [0, ${vocabSize})`);
    }
  });
  return tokens as number[];
}

export function jsonlWriter(path: string) {
  const stream = createWriteStream(path);
  return {
    write(value: unknown) {
      stream.write(`${JSON.stringify(value)}\n`);
    },
    close(): Promise<void> {
      return new Promise((resolve, reject) =>
        stream.end((error?: Error | null) => (error ? reject(error) : resolve())),
      );
    },
  };
}

/** A one-line progress report on stderr, rewritten in place on a terminal. */
export function progress(label: string, total: number) {
  const started = Date.now();
  const tty = process.stderr.isTTY;
  return (done: number, extra = "") => {
    const seconds = (Date.now() - started) / 1000;
    const text = `${label}: ${done}/${total} (${seconds.toFixed(1)} s)${extra ? ` ${extra}` : ""}`;
    process.stderr.write(tty ? `\r${text}${done === total ? "\n" : ""}` : `${text}\n`);
  };
}
