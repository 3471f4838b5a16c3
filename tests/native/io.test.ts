// native/src/io: the JSON parser, safetensors against the Python library byte for byte, HF
// checkpoint folders (single, sharded, resaved and loaded by transformers), and every bad input.
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  inspectCheckpoint,
  jsonRoundTrip,
  readSafetensors,
  resaveCheckpoint,
  writeSafetensors,
} from "../../src/index.js";
import type { StoredTensor } from "../../src/native/io.js";
import { runPython, tempDir } from "../helpers/python.js";

const tmp = tempDir("io");
after(() => tmp.cleanup());

function hex(data: ArrayBufferView): string {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("hex");
}

type Described = Record<string, { dtype: string; shape: number[]; hex: string }>;

// ---------------------------------------------------------------------------------------------
// JSON

test("json: values round trip, document order kept, floats keep their .0 as in Python", () => {
  assert.equal(
    jsonRoundTrip('{"b": 1, "a": [true, false, null], "c": {"d": "x"}}'),
    '{"b":1,"a":[true,false,null],"c":{"d":"x"}}',
  );
  assert.equal(jsonRoundTrip(" [ ] "), "[]");
  assert.equal(jsonRoundTrip("{}"), "{}");
  assert.equal(jsonRoundTrip("1.0"), "1.0");
  assert.equal(jsonRoundTrip("0.0"), "0.0", "transformers 5 refuses 0 for a float field");
  assert.equal(jsonRoundTrip("7"), "7");
  assert.equal(jsonRoundTrip("1000000.0"), "1000000.0");
  assert.equal(jsonRoundTrip("-0.5"), "-0.5");
  assert.equal(jsonRoundTrip("1e-6"), "1e-06");
  assert.equal(jsonRoundTrip("2.5E+3"), "2500.0");
  assert.equal(jsonRoundTrip("0.1"), "0.1");
  assert.equal(jsonRoundTrip("1e400".replace("400", "-400")), "0.0");
  assert.equal(jsonRoundTrip("1e16"), "1e+16");
  assert.equal(jsonRoundTrip("9223372036854775807"), "9223372036854775807", "int64 kept exactly");
  assert.equal(jsonRoundTrip("-9223372036854775808"), "-9223372036854775808");
  assert.equal(jsonRoundTrip("1e20"), "1e+20");
  for (const x of [Math.PI, 1 / 3, 5e-324, 1.7976931348623157e308, 123456.789]) {
    assert.equal(Number(jsonRoundTrip(String(x))), x, `${x} reads back exactly`);
  }
});

test("json: strings, escapes and unicode", () => {
  assert.equal(jsonRoundTrip('"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t"'), '"a\\"b\\\\c/d\\b\\f\\n\\r\\t"');
  assert.equal(jsonRoundTrip('"\\u0041\\u00e9\\u4e2d"'), '"Aé中"');
  assert.equal(jsonRoundTrip('"\\ud83d\\ude00"'), '"😀"', "surrogate pair");
  assert.equal(jsonRoundTrip('"\\u0001"'), '"\\u0001"');
  assert.equal(jsonRoundTrip('"héllo 😀"'), '"héllo 😀"', "raw UTF-8 passes");
  const text = JSON.stringify({ s: 'q"\\\n\u0007é😀', n: [1, -2.5, 3e-7], o: { "": null } });
  assert.deepEqual(JSON.parse(jsonRoundTrip(text)), JSON.parse(text));
});

test("json: indented output like Python's json.dumps(indent=2)", () => {
  assert.equal(
    jsonRoundTrip('{"a":[1,{"b":[]}],"c":{}}', 2),
    '{\n  "a": [\n    1,\n    {\n      "b": []\n    }\n  ],\n  "c": {}\n}',
  );
});

test("json: errors name the problem and the offset", () => {
  const cases: [string, RegExp][] = [
    ["", /^Error: json: unexpected end of input at offset 0$/],
    ["{} x", /json: unexpected trailing characters at offset 3/],
    ["[1,]", /json: unexpected character ']' at offset 3/],
    ['{"a" 1}', /json: expected ':' at offset 5/],
    ['{"a":1,}', /json: expected a string key at offset 7/],
    ['{"a":1 "b":2}', /json: expected ',' or '}' at offset 7/],
    ["[1 2]", /json: expected ',' or ']' at offset 3/],
    ["01", /json: leading zero in a number at offset 1/],
    ["1.", /json: expected a digit after '.' at offset 2/],
    ["1e+", /json: expected a digit in the exponent at offset 3/],
    ["-", /json: expected a digit at offset 1/],
    ["1e400", /json: number out of range at offset 0/],
    ["tru", /json: invalid literal at offset 0/],
    ["NaN", /json: unexpected character 'N' at offset 0/],
    ['"abc', /json: unterminated string at offset 4/],
    ['"a\nb"', /json: control character in a string at offset 2/],
    ['"\\x"', /json: invalid escape '\\x' at offset 1/],
    ['"\\u12g4"', /json: invalid hex digit in \\u escape at offset 5/],
    ['"\\ud83d"', /json: high surrogate without a low surrogate at offset 1/],
    ['"\\ud83d\\u0041"', /json: high surrogate without a low surrogate at offset 1/],
    ['"\\ude00"', /json: lone low surrogate at offset 1/],
    ['{"a":1,"a":2}', /json: duplicate key 'a' in the object at offset 0/],
    ["[".repeat(600) + "]".repeat(600), /json: nesting deeper than 512 at offset 512/],
  ];
  for (const [text, message] of cases)
    assert.throws(() => jsonRoundTrip(text), message, JSON.stringify(text));
  assert.equal(jsonRoundTrip("[".repeat(512) + "]".repeat(512)).length, 1024, "512 levels are fine");
});

// ---------------------------------------------------------------------------------------------
// safetensors against Python's safetensors

test("safetensors: a file written by Python (every dtype) reads back exactly", async () => {
  const path = join(tmp.path, "python.safetensors");
  const expected = JSON.parse(runPython("io_reference.py", ["write-dtypes", path])) as Described;
  const file = await readSafetensors(path);
  assert.deepEqual(file.metadata, { format: "pt", note: 'héllo "world"' });
  const got: Described = {};
  for (const t of file.tensors) got[t.name] = { dtype: t.dtype, shape: t.shape, hex: hex(t.data) };
  assert.deepEqual(got, expected);
  const names = new Set(file.tensors.map((t) => t.dtype));
  for (const dtype of [
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
  ]) {
    assert.ok(names.has(dtype as never), `covers ${dtype}`);
  }
});

test("safetensors: a file we write reads back exactly in Python, in HF's layout", async () => {
  const path = join(tmp.path, "ours.safetensors");
  const tensors: StoredTensor[] = [
    {
      name: "w.f32",
      dtype: "float32",
      shape: [2, 3],
      data: new Float32Array([1, -2, 3.5, Number.NaN, -0, 1e-40]),
    },
    { name: "w.f64", dtype: "float64", shape: [2], data: new Float64Array([Math.PI, -1e300]) },
    { name: "w.bf16", dtype: "bfloat16", shape: [3], data: new Uint16Array([0x3f80, 0xc000, 0x7f80]) },
    { name: "w.f16", dtype: "float16", shape: [1, 3], data: new Uint16Array([0x3c00, 0x7bff, 0x8001]) },
    { name: "i64", dtype: "int64", shape: [2], data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n]) },
    { name: "i32", dtype: "int32", shape: [3], data: new Int32Array([-5, 0, 2 ** 31 - 1]) },
    { name: "i16", dtype: "int16", shape: [2], data: new Int16Array([-32768, 32767]) },
    { name: "i8", dtype: "int8", shape: [3], data: new Int8Array([-128, 0, 127]) },
    { name: "u8", dtype: "uint8", shape: [3], data: new Uint8Array([0, 128, 255]) },
    { name: "mask", dtype: "bool", shape: [2, 2], data: new Uint8Array([1, 0, 0, 1]) },
    { name: "fp8", dtype: "float8_e4m3fn", shape: [2], data: new Uint8Array([0x38, 0xc0]) },
    { name: "scalar", dtype: "float32", shape: [], data: new Float32Array([7]) },
    { name: "empty", dtype: "int32", shape: [0, 4], data: new Int32Array(0) },
    // A subarray: its byte offset must be honoured.
    { name: "sub", dtype: "float32", shape: [2], data: new Float32Array([9, 8, 7, 6]).subarray(2) },
  ];
  const { bytes } = await writeSafetensors(path, tensors, { format: "pt", who: "tiller ✓" });
  assert.equal(
    bytes,
    tensors.reduce((n, t) => n + t.data.byteLength, 0),
  );
  const seen = JSON.parse(runPython("io_reference.py", ["read", path])) as {
    metadata: Record<string, string>;
    header_bytes: number;
    keys: string[];
    tensors: Described;
  };
  assert.deepEqual(seen.metadata, { format: "pt", who: "tiller ✓" });
  assert.equal(seen.header_bytes % 8, 0, "header padded to 8 bytes");
  const widths = ["i64", "w.f64", "empty", "i32", "scalar", "sub", "w.f32"];
  assert.deepEqual(
    seen.keys.slice(0, 8),
    ["__metadata__", ...widths],
    "metadata, then wider dtypes first, by name",
  );
  for (const t of tensors) {
    const dtype = t.dtype === "float8_e4m3fn" ? "float8_e4m3fn" : t.dtype;
    assert.deepEqual(seen.tensors[t.name], { dtype, shape: t.shape, hex: hex(t.data) }, t.name);
  }
  // And our own reader agrees.
  const back = await readSafetensors(path);
  for (const t of back.tensors) {
    const src = tensors.find((s) => s.name === t.name);
    assert.ok(src);
    assert.equal(hex(t.data), hex(src.data), t.name);
  }
});

test("safetensors: writing leaves no temporary files and replaces an existing file", async () => {
  const dir = join(tmp.path, "atomic");
  mkdirSync(dir);
  const path = join(dir, "x.safetensors");
  await writeSafetensors(path, [{ name: "a", dtype: "float32", shape: [1], data: new Float32Array([1]) }]);
  await writeSafetensors(path, [{ name: "b", dtype: "float32", shape: [1], data: new Float32Array([2]) }]);
  assert.deepEqual(readdirSync(dir), ["x.safetensors"]);
  assert.deepEqual(
    (await readSafetensors(path)).tensors.map((t) => t.name),
    ["b"],
  );
  await assert.rejects(
    writeSafetensors(join(tmp.path, "no", "such", "dir.safetensors"), []),
    /no\/such\/dir.safetensors: cannot create .*No such file or directory/,
  );
});

test("safetensors: argument checks name the field", async () => {
  const good: StoredTensor = { name: "a", dtype: "float32", shape: [2], data: new Float32Array(2) };
  await assert.rejects(writeSafetensors("", [good]), /path: "" must be a non-empty string/);
  await assert.rejects(writeSafetensors("x", [good, good]), /tensors\[1\].name: "a" is given twice/);
  await assert.rejects(
    writeSafetensors("x", [{ ...good, name: "__metadata__" }]),
    /tensors\[0\].name: "__metadata__" is reserved/,
  );
  await assert.rejects(
    writeSafetensors("x", [{ ...good, shape: [3] }]),
    /tensors\[0\].shape: \[3\] holds 3 elements, but data has 2/,
  );
  await assert.rejects(
    writeSafetensors("x", [{ ...good, dtype: "int4" as never }]),
    /tensors\[0\].dtype: "int4" is not a dtype/,
  );
  await assert.rejects(writeSafetensors("x", [good], { a: 1 as never }), /metadata.a: 1 must be a string/);
  await assert.rejects(readSafetensors(3 as never), /path: 3 must be a non-empty string/);
  await assert.rejects(
    resaveCheckpoint("a", "b", { maxShardBytes: 0 }),
    /maxShardBytes: 0 must be a positive integer/,
  );
});

// A safetensors file from raw parts: header object (or text) then `data` bytes.
function craft(name: string, header: unknown, data = Buffer.alloc(0), length?: bigint): string {
  const text = Buffer.isBuffer(header)
    ? header
    : Buffer.from(typeof header === "string" ? header : JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(length ?? BigInt(text.length));
  const path = join(tmp.path, name);
  writeFileSync(path, Buffer.concat([prefix, text, data]));
  return path;
}

test("safetensors: bad files fail with the file and the problem named", async () => {
  const f32 = (begin: number, end: number, shape = [2]) => ({
    dtype: "F32",
    shape,
    data_offsets: [begin, end],
  });
  const short = join(tmp.path, "short.safetensors");
  writeFileSync(short, Buffer.from([1, 2, 3, 4, 5]));
  const cases: [string, RegExp][] = [
    [short, /short.safetensors: file is 5 bytes, shorter than the 8-byte header length/],
    [
      craft("trunc.safetensors", { a: f32(0, 8) }, Buffer.alloc(8), 1000n),
      // The length (a non-safetensors file's first 8 bytes) is not echoed: only what follows it.
      /trunc.safetensors: truncated or not a safetensors file: the header length is more than the \d+ bytes that follow it/,
    ],
    [
      craft("notjson.safetensors", "{not json"),
      /notjson.safetensors: corrupt header: json: expected a string key at offset 1/,
    ],
    [craft("array.safetensors", "[1]"), /array.safetensors: corrupt header: a array, not an object/],
    [
      craft("nodtype.safetensors", { a: { shape: [2], data_offsets: [0, 8] } }, Buffer.alloc(8)),
      /nodtype.safetensors: corrupt header: tensor 'a': missing field 'dtype'/,
    ],
    [
      craft("dtype.safetensors", { a: { dtype: "F7", shape: [2], data_offsets: [0, 8] } }, Buffer.alloc(8)),
      /dtype.safetensors: tensor 'a': unknown dtype 'F7' \(known: F32/,
    ],
    [
      craft("range.safetensors", { a: f32(0, 8) }, Buffer.alloc(4)),
      /range.safetensors: tensor 'a': data_offsets \[0, 8\] run past the end of the data \(4 bytes; truncated file\?\)/,
    ],
    [
      craft("size.safetensors", { a: f32(0, 12) }, Buffer.alloc(12)),
      /size.safetensors: tensor 'a': data_offsets \[0, 12\] span 12 bytes, but F32 x \[2\] needs 8/,
    ],
    [
      craft("overlap.safetensors", { a: f32(0, 8), b: f32(4, 12) }, Buffer.alloc(12)),
      /overlap.safetensors: tensors 'a' and 'b' overlap: data_offsets \[0, 8\] and \[4, 12\]/,
    ],
    [
      craft("order.safetensors", { a: f32(8, 0) }, Buffer.alloc(8)),
      /order.safetensors: tensor 'a': data_offsets \[8,0\] is not \[begin, end\]/,
    ],
    [
      craft("shape.safetensors", { a: f32(0, 8, [-2]) }, Buffer.alloc(8)),
      /shape.safetensors: tensor 'a': shape \[-2\] is not a list of non-negative integers/,
    ],
    [
      craft("meta.safetensors", { __metadata__: { a: 1 } }),
      /meta.safetensors: corrupt header: __metadata__\['a'\] is not a string/,
    ],
    [
      craft(
        "dup.safetensors",
        '{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"a":{}}',
        Buffer.alloc(4),
      ),
      /dup.safetensors: corrupt header: json: duplicate key 'a'/,
    ],
    // JS strings cannot carry invalid UTF-8, so the parser's check is tested through a header.
    [
      craft("utf8.safetensors", Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d])),
      /utf8.safetensors: corrupt header: json: invalid UTF-8 at offset 2/,
    ],
    [
      craft("overlong.safetensors", Buffer.from([0x22, 0xe0, 0x80, 0xaf, 0x22])),
      /overlong.safetensors: corrupt header: json: invalid UTF-8 at offset 1/,
    ],
    [join(tmp.path, "absent.safetensors"), /absent.safetensors: cannot open: No such file or directory/],
  ];
  for (const [path, message] of cases) await assert.rejects(readSafetensors(path), message, path);
  // A well-formed crafted file with an unaligned header still reads (aligned copy).
  const odd = craft("odd.safetensors", { a: f32(0, 8) }, Buffer.from(new Float32Array([1.5, -2]).buffer));
  assert.deepEqual(Array.from((await readSafetensors(odd)).tensors[0]?.data as Float32Array), [1.5, -2]);
});

// ---------------------------------------------------------------------------------------------
// HF checkpoint folders

const model = join(tmp.path, "qwen3");
const sharded = join(tmp.path, "qwen3-sharded");
let made = false;
function makeModels(): void {
  if (made) return;
  runPython("io_reference.py", ["make-model", model]);
  runPython("io_reference.py", ["make-model", sharded, "100KB"]);
  made = true;
}

test("checkpoint: a HF folder, single file and sharded, opens with the same tensors", async () => {
  makeModels();
  const single = await inspectCheckpoint(model);
  const shards = await inspectCheckpoint(sharded);
  assert.equal(single.config.model_type, "qwen3");
  assert.equal(single.config.hidden_size, 64);
  assert.deepEqual(single.files, [join(model, "model.safetensors")]);
  assert.ok(shards.files.length > 1, `sharded into ${shards.files.length}`);
  assert.match(shards.files[0] ?? "", /model-00001-of-0000\d.safetensors$/);
  assert.deepEqual(shards.tensors, single.tensors);
  const embed = single.tensors.find((t) => t.name === "model.embed_tokens.weight");
  assert.deepEqual(embed, { name: "model.embed_tokens.weight", dtype: "float32", shape: [256, 64] });
  assert.equal(single.tensors.length, 25);
});

test("checkpoint: resaved by us (single and sharded), transformers loads identical logits", async () => {
  makeModels();
  const cases: [string, string, number | undefined, number][] = [
    [model, join(tmp.path, "resave-single"), undefined, 1],
    [model, join(tmp.path, "resave-sharded"), 60_000, 0],
    [sharded, join(tmp.path, "resave-from-shards"), undefined, 1],
  ];
  for (const [src, dst, maxShardBytes, fileCount] of cases) {
    const { files } = await resaveCheckpoint(src, dst, maxShardBytes === undefined ? {} : { maxShardBytes });
    if (fileCount > 0) assert.equal(files.length, fileCount);
    else assert.ok(files.length > 2, `${files.length} shards`);
    const result = JSON.parse(runPython("io_reference.py", ["compare-logits", model, dst])) as {
      equal: boolean;
      max_abs_diff: number;
    };
    assert.equal(result.equal, true, `${dst}: max |diff| ${result.max_abs_diff}`);
    const ours = await inspectCheckpoint(dst);
    assert.deepEqual(ours.tensors, (await inspectCheckpoint(src)).tensors);
  }
  // The sharded index is HF's: metadata.total_size and a weight_map sorted by name.
  const index = JSON.parse(
    readFileSync(join(tmp.path, "resave-sharded", "model.safetensors.index.json"), "utf8"),
  );
  assert.equal(
    index.metadata.total_size,
    4 * (await inspectCheckpoint(model)).tensors.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0),
  );
  const keys = Object.keys(index.weight_map);
  assert.deepEqual(keys, [...keys].sort());
  // Saving single-file over a sharded folder removes the stale shards and index.
  await resaveCheckpoint(model, join(tmp.path, "resave-sharded"));
  assert.deepEqual(readdirSync(join(tmp.path, "resave-sharded")).sort(), [
    "config.json",
    "model.safetensors",
  ]);
});

function copyFolder(src: string, dst: string): void {
  mkdirSync(dst, { recursive: true });
  for (const name of readdirSync(src)) copyFileSync(join(src, name), join(dst, name));
}

test("checkpoint: bad folders fail with the folder and the problem named", async () => {
  makeModels();
  const empty = join(tmp.path, "empty");
  mkdirSync(empty);
  await assert.rejects(
    inspectCheckpoint(empty),
    /empty: no config.json \(is this a Hugging Face model folder\?\)/,
  );
  await assert.rejects(inspectCheckpoint(join(tmp.path, "nowhere")), /nowhere: not a folder/);

  const noWeights = join(tmp.path, "no-weights");
  mkdirSync(noWeights);
  copyFileSync(join(model, "config.json"), join(noWeights, "config.json"));
  await assert.rejects(
    inspectCheckpoint(noWeights),
    /no-weights: neither model.safetensors nor model.safetensors.index.json$/,
  );
  writeFileSync(join(noWeights, "pytorch_model.bin"), "");
  await assert.rejects(
    inspectCheckpoint(noWeights),
    /which tiller does not read: convert them to safetensors/,
  );

  const badConfig = join(tmp.path, "bad-config");
  copyFolder(model, badConfig);
  writeFileSync(join(badConfig, "config.json"), '{"a": }');
  await assert.rejects(
    inspectCheckpoint(badConfig),
    /bad-config\/config.json: not valid JSON: json: unexpected character '}' at offset 6/,
  );

  const indexOf = (dir: string) =>
    JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8"));
  const writeIndex = (dir: string, index: unknown) =>
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify(index));

  const missingShard = join(tmp.path, "missing-shard");
  copyFolder(sharded, missingShard);
  const second = readdirSync(missingShard).find((n) => n.startsWith("model-00002-of-")) ?? "";
  rmSync(join(missingShard, second));
  await assert.rejects(
    inspectCheckpoint(missingShard),
    new RegExp(
      `model.safetensors.index.json: names shard '${second}' \\(for tensor '.+'\\), which is missing`,
    ),
  );

  const twice = join(tmp.path, "twice");
  copyFolder(sharded, twice);
  const first = join(twice, readdirSync(twice).find((n) => n.startsWith("model-00001-of-")) ?? "");
  const firstFile = await readSafetensors(first);
  const dupName = firstFile.tensors[0]?.name ?? "";
  const dupShard = join(twice, second);
  const extra = await readSafetensors(dupShard);
  await writeSafetensors(dupShard, [...extra.tensors, ...firstFile.tensors.slice(0, 1)], extra.metadata);
  await assert.rejects(
    inspectCheckpoint(twice),
    new RegExp(
      `twice: tensor '${dupName.replace(/\./g, "\\.")}' is in two shards, model-00001-of-\\d+.safetensors and ${second}`,
    ),
  );

  const absent = join(tmp.path, "absent-tensor");
  copyFolder(sharded, absent);
  const index = indexOf(absent);
  index.weight_map["model.extra.weight"] = second;
  writeIndex(absent, index);
  await assert.rejects(
    inspectCheckpoint(absent),
    new RegExp(`lists tensor 'model.extra.weight' in ${second}, but that shard does not hold it`),
  );

  const outside = join(tmp.path, "outside");
  copyFolder(sharded, outside);
  const escapeIndex = indexOf(outside);
  escapeIndex.weight_map["lm_head.weight"] = "../qwen3/model.safetensors";
  writeIndex(outside, escapeIndex);
  await assert.rejects(
    inspectCheckpoint(outside),
    /weight_map\['lm_head.weight'\] = '..\/qwen3\/model.safetensors' is not a file name in the folder/,
  );

  const corruptShard = join(tmp.path, "corrupt-shard");
  copyFolder(model, corruptShard);
  writeFileSync(join(corruptShard, "model.safetensors"), Buffer.from([1, 0, 0]));
  await assert.rejects(inspectCheckpoint(corruptShard), /corrupt-shard\/model.safetensors: file is 3 bytes/);
});
