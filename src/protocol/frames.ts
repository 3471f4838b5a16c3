// Framing: a message is [JSON header, ...bodies]. Typed arrays and Arrow tables anywhere in a
// payload are lifted out into their own frames (sent as they are: no copy, no base64) and left in
// the JSON as {"$body": n}; the header's `bodies` says what each frame holds.
import { type Table, tableFromIPC, tableToIPC } from "apache-arrow";
import { ArrowCheckError, checkArrowStream } from "./arrow-check.js";
import type { ArrowGuard } from "./arrow-guard.js";
import { ValidationError } from "./schema.js";

export type TypedArrayKind =
  | "Float32Array"
  | "Float64Array"
  | "Int8Array"
  | "Uint8Array"
  | "Int16Array"
  | "Uint16Array"
  | "Int32Array"
  | "Uint32Array"
  | "BigInt64Array";

const typedArrayClasses = {
  Float32Array,
  Float64Array,
  Int8Array,
  Uint8Array,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  BigInt64Array,
} as const;

export type TypedArray = InstanceType<(typeof typedArrayClasses)[TypedArrayKind]>;

/** What one body frame holds: a little-endian typed array, or an Arrow IPC stream. */
export type BodyKind = TypedArrayKind | "arrow";

export interface BodyRef {
  $body: number;
}

/** Thrown for frames that cannot be a message at all (bad JSON, bad body table). */
export class FrameError extends Error {
  readonly code = "BAD_FRAME";
}

function isArrowTable(value: unknown): value is Table {
  // instanceof fails across two copies of apache-arrow; the IPC writer only needs the shape.
  return (
    typeof value === "object" &&
    value !== null &&
    "schema" in value &&
    "batches" in value &&
    Array.isArray((value as { batches: unknown }).batches)
  );
}

/** Splits a payload into JSON-safe data plus body frames. Frames alias the typed arrays' memory. */
export function liftBodies(payload: unknown): { json: unknown; kinds: BodyKind[]; frames: Uint8Array[] } {
  const kinds: BodyKind[] = [];
  const frames: Uint8Array[] = [];
  const walk = (value: unknown): unknown => {
    if (ArrayBuffer.isView(value) && !(value instanceof DataView)) {
      const kind = value.constructor.name as TypedArrayKind;
      if (!Object.hasOwn(typedArrayClasses, kind)) throw new TypeError(`cannot send a ${kind}`);
      kinds.push(kind);
      frames.push(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
      return { $body: kinds.length - 1 };
    }
    if (isArrowTable(value)) {
      kinds.push("arrow");
      frames.push(tableToIPC(value, "stream"));
      return { $body: kinds.length - 1 };
    }
    if (Array.isArray(value)) return value.map(walk);
    if (value !== null && typeof value === "object") {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = walk(v);
      return out;
    }
    return value;
  };
  return { json: walk(payload), kinds, frames };
}

function decodeBody(kind: BodyKind, frame: Uint8Array, index: number): unknown {
  if (kind === "arrow") {
    // apache-arrow's reader trusts its input (a changed count makes it allocate without bound),
    // so every stream is walked and its counts held against its bytes first.
    try {
      checkArrowStream(frame);
    } catch (error) {
      if (!(error instanceof ArrowCheckError)) throw error;
      throw new FrameError(`body ${index}: not a valid Arrow IPC stream (${error.message})`);
    }
    try {
      return tableFromIPC(frame);
    } catch (error) {
      throw new FrameError(`body ${index}: not an Arrow IPC stream (${(error as Error).message})`);
    }
  }
  const Class = Object.hasOwn(typedArrayClasses, kind) ? typedArrayClasses[kind] : undefined;
  if (!Class) throw new FrameError(`bodies[${index}]: unknown body kind ${JSON.stringify(kind)}`);
  const width = Class.BYTES_PER_ELEMENT;
  if (frame.byteLength % width !== 0) {
    throw new FrameError(`body ${index}: ${frame.byteLength} bytes is not a whole number of ${kind} items`);
  }
  // A view needs an aligned offset; ZeroMQ gives no alignment promise, so copy only when off.
  const aligned =
    frame.byteOffset % width === 0
      ? frame
      : new Uint8Array(frame.buffer.slice(frame.byteOffset, frame.byteOffset + frame.byteLength));
  return new Class(aligned.buffer as ArrayBuffer, aligned.byteOffset, aligned.byteLength / width);
}

/** Puts decoded bodies back where their {"$body": n} references stand. Each body is used once. */
export function placeBodies(json: unknown, bodies: unknown, frames: Uint8Array[]): unknown {
  const kinds = bodies ?? [];
  if (!Array.isArray(kinds)) throw new FrameError("header.bodies: expected an array of body kinds");
  if (kinds.length !== frames.length) {
    throw new FrameError(`header.bodies lists ${kinds.length} bodies but ${frames.length} body frames came`);
  }
  const used = new Set<number>();
  const walk = (value: unknown, field: string): unknown => {
    if (Array.isArray(value)) return value.map((v, i) => walk(v, `${field}[${i}]`));
    if (value !== null && typeof value === "object") {
      const entries = Object.entries(value);
      if (entries.length === 1 && entries[0]?.[0] === "$body") {
        const n = entries[0][1];
        if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n >= frames.length || used.has(n)) {
          throw new ValidationError(field, `body reference ${JSON.stringify(n)} is out of range or reused`);
        }
        used.add(n);
        return decodeBody(kinds[n] as BodyKind, frames[n] as Uint8Array, n);
      }
      const out: Record<string, unknown> = {};
      // defineProperty: a "__proto__" key stays an own (and so refusable) field, not a prototype.
      for (const [k, v] of entries) {
        Object.defineProperty(out, k, {
          value: walk(v, `${field}.${k}`),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return out;
    }
    return value;
  };
  return walk(json, "args");
}

/**
 * placeBodies for messages from peers that may be hostile: each Arrow body is first decoded on
 * trial in the guard's bounded thread, so that no stream can stall or exhaust this process.
 */
export async function placeBodiesGuarded(
  json: unknown,
  bodies: unknown,
  frames: Uint8Array[],
  guard: ArrowGuard,
): Promise<unknown> {
  if (Array.isArray(bodies)) {
    for (const [n, kind] of bodies.entries()) {
      const frame = frames[n];
      if (kind !== "arrow" || !frame) continue;
      try {
        checkArrowStream(frame);
        await guard.trial(frame);
      } catch (error) {
        throw new FrameError(`body ${n}: not a valid Arrow IPC stream (${(error as Error).message})`);
      }
    }
  }
  return placeBodies(json, bodies, frames);
}

/** Parses frame 0 as a JSON object; anything else is a FrameError. */
export function parseHeader(frame: Uint8Array | undefined): Record<string, unknown> {
  if (!frame) throw new FrameError("empty message: frame 0 must be a JSON header");
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength).toString("utf8"));
  } catch {
    throw new FrameError("frame 0 is not JSON");
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new FrameError("frame 0 must be a JSON object");
  }
  return header as Record<string, unknown>;
}

/** [header (with `bodies` and `payloadKey` holding the lifted payload), ...frames]. */
export function encode(header: Record<string, unknown>, payloadKey: string, payload: unknown): Uint8Array[] {
  const { json, kinds, frames } = liftBodies(payload);
  const full =
    kinds.length > 0 ? { ...header, [payloadKey]: json, bodies: kinds } : { ...header, [payloadKey]: json };
  return [Buffer.from(JSON.stringify(full)), ...frames];
}

/** The inverse of encode: the header and its payload with bodies placed back. */
export function decode(
  frames: Uint8Array[],
  payloadKey: string,
): { header: Record<string, unknown>; payload: unknown } {
  const header = parseHeader(frames[0]);
  const payload = placeBodies(header[payloadKey], header.bodies, frames.slice(1));
  return { header, payload };
}

export function totalBytes(frames: Uint8Array[]): number {
  return frames.reduce((n, f) => n + f.byteLength, 0);
}
