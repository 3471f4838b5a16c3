// Tables written by exportTable read back in pyarrow (what pandas, polars and DuckDB use) with the
// same columns, types and values: list columns stay lists, nulls stay nulls.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import { exportTable } from "../../src/notebook/export.js";
import { rolloutsTable } from "../../src/rl/rollouts.js";
import { runPython, tempDir } from "../helpers/python.js";

const dir = tempDir("export");
after(() => dir.cleanup());

const table = rolloutsTable({
  step: 3,
  samples: [
    {
      uid: "3.0.0",
      round: 0,
      prompt: Int32Array.from([5, 6, 7]),
      response: Int32Array.from([8, 1]),
      rolloutLogprobs: Float32Array.from([-0.5, -1.25]),
      oldLogprobs: Float32Array.from([-0.5, -1]),
      advantages: Float32Array.from([0.75, 0.75]),
      finishReason: "stop",
      dataSource: "tiller/next-digit",
      groundTruth: "8",
      promptText: "567=",
      responseText: "8",
      score: 1,
      shapedScore: 1,
    },
    {
      uid: "3.0.0",
      round: 0,
      prompt: Int32Array.from([5, 6, 7]),
      response: Int32Array.from([2]),
      rolloutLogprobs: Float32Array.from([-2.5]),
      finishReason: "length",
      dataSource: "tiller/next-digit",
      groundTruth: "8",
    },
  ],
});

for (const ext of ["parquet", "arrow", "feather", "arrows"]) {
  test(`a rollouts table exported as .${ext} reads back in pyarrow`, async () => {
    const file = await exportTable(table, join(dir.path, `rollouts.${ext}`));
    const out = JSON.parse(runPython("read_table.py", [file])) as {
      schema: Record<string, string>;
      rows: Record<string, unknown>[];
      num_rows: number;
    };
    assert.equal(out.num_rows, 2);
    assert.equal(
      out.schema.response_tokens,
      ext === "parquet" ? "list<element: int32>" : "list<item: int32>",
    );
    assert.equal(out.schema.score, "double");
    const [a, b] = out.rows as Record<string, unknown>[];
    assert.deepEqual(a?.response_tokens, [8, 1]);
    assert.deepEqual(a?.logprob_diff, [0, -0.25]);
    assert.equal(a?.response, "8");
    assert.equal(b?.old_logprobs, null);
    assert.equal(b?.score, null);
    assert.equal(b?.finish_reason, "length");
    assert.equal(a?.step, 3);
  });
}

test("an unknown extension is refused, naming the allowed ones", async () => {
  await assert.rejects(
    exportTable(table, join(dir.path, "x.csv")),
    /give a \.arrow, \.feather, \.arrows or \.parquet name/,
  );
});
