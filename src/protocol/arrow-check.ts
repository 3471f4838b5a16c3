// Structural checks of an Arrow IPC stream before any decoder sees it. apache-arrow's reader
// trusts the bytes it is given: a changed row count or vector length makes it allocate and loop
// without bound. Here every message is walked with bounds checks (our own flatbuffer reading of the
// few tables a stream holds), and every count is held against the bytes that could back it.

/** What a stream passed in: messages, record batches, and the rows they claim. */
export interface ArrowStreamShape {
  messages: number;
  recordBatches: number;
  rows: number;
}

export class ArrowCheckError extends Error {}

const CONTINUATION = 0xffffffff;
const HEADER_SCHEMA = 1;
const HEADER_DICTIONARY_BATCH = 2;
const HEADER_RECORD_BATCH = 3;
/** Nesting deeper than this is refused (a Field's children hold Fields). */
const MAX_DEPTH = 64;

/** Bounds-checked reads of one flatbuffer (one message's metadata). */
class FlatBuffer {
  readonly #view: DataView;
  /** Elements visited so far: a budget so that no walk costs more than the bytes allow. */
  #visited = 0;

  constructor(readonly bytes: Uint8Array) {
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get length(): number {
    return this.bytes.byteLength;
  }

  #need(at: number, width: number, what: string): void {
    if (!(at >= 0 && at + width <= this.bytes.byteLength)) {
      throw new ArrowCheckError(
        `${what} at byte ${at} lies outside the ${this.bytes.byteLength}-byte metadata`,
      );
    }
  }

  u8(at: number, what: string): number {
    this.#need(at, 1, what);
    return this.#view.getUint8(at);
  }

  u16(at: number, what: string): number {
    this.#need(at, 2, what);
    return this.#view.getUint16(at, true);
  }

  u32(at: number, what: string): number {
    this.#need(at, 4, what);
    return this.#view.getUint32(at, true);
  }

  i32(at: number, what: string): number {
    this.#need(at, 4, what);
    return this.#view.getInt32(at, true);
  }

  /** A 64-bit count or offset; refused beyond 2^53 (no real body comes near that). */
  i64(at: number, what: string): number {
    this.#need(at, 8, what);
    const value = this.#view.getBigInt64(at, true);
    if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ArrowCheckError(`${what} is ${value}, outside [0, 2^53)`);
    }
    return Number(value);
  }

  visit(count: number, what: string): void {
    this.#visited += count;
    if (this.#visited > this.bytes.byteLength) {
      throw new ArrowCheckError(`${what}: more elements than the metadata's bytes can hold`);
    }
  }

  /** The table an offset at `at` points to. */
  table(at: number, what: string): Table {
    const start = at + this.u32(at, what);
    const vtable = start - this.i32(start, `${what} vtable offset`);
    const vtableBytes = this.u16(vtable, `${what} vtable size`);
    const inlineBytes = this.u16(vtable + 2, `${what} table size`);
    if (vtableBytes < 4 || vtableBytes % 2 !== 0) {
      throw new ArrowCheckError(`${what}: vtable size ${vtableBytes} is not a valid size`);
    }
    this.#need(vtable, vtableBytes, `${what} vtable`);
    this.#need(start, Math.max(inlineBytes, 4), `${what} table`);
    this.visit(1, what);
    return new Table(this, start, vtable, vtableBytes, inlineBytes, what);
  }

  /** A vector an offset at `at` points to: where its elements start, and how many. */
  vector(at: number, elementBytes: number, what: string): { start: number; count: number } {
    const position = at + this.u32(at, what);
    const count = this.u32(position, `${what} length`);
    const start = position + 4;
    if (count * elementBytes > this.bytes.byteLength - start) {
      throw new ArrowCheckError(
        `${what}: ${count} elements of ${elementBytes} bytes do not fit the metadata`,
      );
    }
    this.visit(count, what);
    return { start, count };
  }
}

class Table {
  constructor(
    readonly fb: FlatBuffer,
    readonly start: number,
    readonly vtable: number,
    readonly vtableBytes: number,
    readonly inlineBytes: number,
    readonly what: string,
  ) {}

  /** Where slot `slot`'s value lies, or undefined when absent. */
  field(slot: number, width: number): number | undefined {
    const entry = 4 + 2 * slot;
    if (entry + 2 > this.vtableBytes) return undefined;
    const offset = this.fb.u16(this.vtable + entry, `${this.what} field ${slot}`);
    if (offset === 0) return undefined;
    if (offset + width > this.inlineBytes) {
      throw new ArrowCheckError(`${this.what} field ${slot} lies outside its table`);
    }
    return this.start + offset;
  }

  u8(slot: number, fallback: number): number {
    const at = this.field(slot, 1);
    return at === undefined ? fallback : this.fb.u8(at, `${this.what} field ${slot}`);
  }

  i64(slot: number, name: string): number {
    const at = this.field(slot, 8);
    return at === undefined ? 0 : this.fb.i64(at, `${this.what}.${name}`);
  }

  table(slot: number, name: string): Table | undefined {
    const at = this.field(slot, 4);
    return at === undefined ? undefined : this.fb.table(at, `${this.what}.${name}`);
  }

  vector(slot: number, elementBytes: number, name: string): { start: number; count: number } {
    const at = this.field(slot, 4);
    return at === undefined
      ? { start: 0, count: 0 }
      : this.fb.vector(at, elementBytes, `${this.what}.${name}`);
  }

  /** A string field: only its bounds matter here. */
  string(slot: number, name: string): void {
    this.vector(slot, 1, name);
  }

  /** A vector of tables, each checked by `each`. */
  tables(slot: number, name: string, each: (t: Table) => void): void {
    const { start, count } = this.vector(slot, 4, name);
    for (let i = 0; i < count; i++) each(this.fb.table(start + 4 * i, `${this.what}.${name}[${i}]`));
  }
}

function checkKeyValues(t: Table, slot: number): void {
  t.tables(slot, "custom_metadata", (kv) => {
    kv.string(0, "key");
    kv.string(1, "value");
  });
}

/** Type tables hold scalars, but Timestamp has a time-zone string and Union a type-id vector. */
function checkType(field: Table): void {
  const typeId = field.u8(2, 0);
  const type = field.table(3, "type");
  if (!type) return;
  if (typeId === 10) type.string(1, "timezone"); // Timestamp
  if (typeId === 14) type.vector(1, 4, "typeIds"); // Union
}

function checkField(field: Table, depth: number): void {
  if (depth > MAX_DEPTH) throw new ArrowCheckError(`fields nest deeper than ${MAX_DEPTH} levels`);
  field.string(0, "name");
  checkType(field);
  const dictionary = field.table(4, "dictionary");
  if (dictionary) dictionary.table(1, "indexType");
  field.tables(5, "children", (child) => checkField(child, depth + 1));
  checkKeyValues(field, 6);
}

/** A record batch's counts against the body that must back them. */
function checkRecordBatch(batch: Table, bodyLength: number): number {
  // Every column that is not of the null type spends at least a bit per row.
  const maxRows = 8 * bodyLength + 64;
  const rows = batch.i64(0, "length");
  if (rows > maxRows) {
    throw new ArrowCheckError(
      `record batch claims ${rows} rows; a ${bodyLength}-byte body holds at most ${maxRows}`,
    );
  }
  const nodes = batch.vector(1, 16, "nodes");
  for (let i = 0; i < nodes.count; i++) {
    const at = nodes.start + 16 * i;
    const length = batch.fb.i64(at, `nodes[${i}].length`);
    const nulls = batch.fb.i64(at + 8, `nodes[${i}].null_count`);
    if (length > maxRows || nulls > length) {
      throw new ArrowCheckError(
        `nodes[${i}] claims ${length} values (${nulls} null); a ${bodyLength}-byte body holds at most ${maxRows}`,
      );
    }
  }
  const buffers = batch.vector(2, 16, "buffers");
  for (let i = 0; i < buffers.count; i++) {
    const at = buffers.start + 16 * i;
    const offset = batch.fb.i64(at, `buffers[${i}].offset`);
    const length = batch.fb.i64(at + 8, `buffers[${i}].length`);
    if (offset + length > bodyLength) {
      throw new ArrowCheckError(
        `buffers[${i}] spans bytes ${offset}..${offset + length}, beyond the ${bodyLength}-byte body`,
      );
    }
  }
  if (batch.table(3, "compression")) throw new ArrowCheckError("compressed record batches are not accepted");
  batch.vector(4, 8, "variadicBufferCounts");
  return rows;
}

/**
 * Walks an Arrow IPC stream: each message's framing, its metadata's flatbuffer, and the counts of
 * every record batch against its body. Throws an ArrowCheckError naming the first fault.
 */
export function checkArrowStream(frame: Uint8Array): ArrowStreamShape {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const shape: ArrowStreamShape = { messages: 0, recordBatches: 0, rows: 0 };
  let at = 0;
  let sawSchema = false;
  while (at < frame.byteLength) {
    if (at + 8 > frame.byteLength)
      throw new ArrowCheckError(`stream ends inside a message prefix at byte ${at}`);
    if (view.getUint32(at, true) !== CONTINUATION) {
      throw new ArrowCheckError(`no continuation marker at byte ${at}`);
    }
    const metadataBytes = view.getInt32(at + 4, true);
    at += 8;
    if (metadataBytes === 0) {
      if (at !== frame.byteLength) {
        throw new ArrowCheckError(`${frame.byteLength - at} bytes follow the end-of-stream marker`);
      }
      break;
    }
    if (metadataBytes < 0 || metadataBytes > frame.byteLength - at) {
      throw new ArrowCheckError(
        `message ${shape.messages} declares ${metadataBytes} metadata bytes; ${frame.byteLength - at} remain`,
      );
    }
    const fb = new FlatBuffer(frame.subarray(at, at + metadataBytes));
    at += metadataBytes;
    const message = fb.table(0, `message ${shape.messages}`);
    const headerType = message.u8(1, 0);
    const header = message.table(2, "header");
    const bodyLength = message.i64(3, "bodyLength");
    checkKeyValues(message, 4);
    if (bodyLength > frame.byteLength - at) {
      throw new ArrowCheckError(
        `message ${shape.messages} declares a ${bodyLength}-byte body; ${frame.byteLength - at} bytes remain`,
      );
    }
    if (!header) throw new ArrowCheckError(`message ${shape.messages} has no header`);
    if (headerType === HEADER_SCHEMA) {
      if (sawSchema) throw new ArrowCheckError("a second schema message");
      sawSchema = true;
      header.tables(1, "fields", (f) => checkField(f, 0));
      checkKeyValues(header, 2);
      header.vector(3, 8, "features");
    } else if (!sawSchema) {
      throw new ArrowCheckError("the stream does not open with a schema message");
    } else if (headerType === HEADER_RECORD_BATCH) {
      shape.rows += checkRecordBatch(header, bodyLength);
      shape.recordBatches++;
    } else if (headerType === HEADER_DICTIONARY_BATCH) {
      const data = header.table(1, "data");
      if (!data) throw new ArrowCheckError("a dictionary batch without data");
      checkRecordBatch(data, bodyLength);
    } else {
      throw new ArrowCheckError(
        `message ${shape.messages}: header type ${headerType} is not part of a table stream`,
      );
    }
    at += bodyLength;
    shape.messages++;
  }
  if (!sawSchema) throw new ArrowCheckError("no schema message");
  return shape;
}
