// The rollout inspector's Node side: the data it embeds (groups, token pieces, rounded per-token
// values, the ratio, nulls), HTML that no text can break out of, option checks, and `inspect`
// outside a notebook. tests/browser/inspector.test.ts opens the pages in Chromium.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import vm from "node:vm";
import { Field, Float32, List, Table, Utf8, vectorFromArray } from "apache-arrow";
import {
  type ColorBy,
  Inspector,
  inspect,
  inspector,
  inspectorData,
  inspectorHtml,
  writeInspector,
} from "../../src/notebook/index.js";
import { type RolloutRecord, rolloutsTable } from "../../src/rl/rollouts.js";
import { Tokenizer } from "../../src/tokenizer/index.js";
import { runPython, tempDir } from "../helpers/python.js";

function record(overrides: Partial<RolloutRecord>): RolloutRecord {
  return {
    uid: "a",
    round: 0,
    prompt: Int32Array.from([9707]),
    response: Int32Array.from([1, 2]),
    rolloutLogprobs: Float32Array.from([-0.12345, -2]),
    finishReason: "stop",
    dataSource: "src",
    groundTruth: "42",
    ...overrides,
  };
}

test("groups, rounded per-token values, the ratio and nulls", () => {
  const table = rolloutsTable({
    step: 4,
    samples: [
      record({
        promptText: "Q?",
        responseText: "xy",
        oldLogprobs: Float32Array.from([-0.1, -2.5]),
        entropy: Float32Array.from([1.23456, Number.NaN]),
        advantages: Float32Array.from([0.5, 0.5]),
        score: 1,
        shapedScore: 0.9,
        pred: "42",
        rewardStatus: "ok",
      }),
      record({ finishReason: "length", advantages: Float32Array.from([-0.25, 0.75]), round: 1 }),
      record({ uid: "b" }),
    ],
  });
  const data = inspectorData(table);
  assert.equal(data.title, "rollouts of step 4");
  assert.equal(data.colorBy, "advantage");
  assert.equal(data.groupsPerPage, 12);
  assert.equal(data.vocab, null);
  assert.deepEqual(data.groups, [
    { uid: "a", prompt: "Q?", truth: "42", source: "src", step: 4 },
    { uid: "b", prompt: "⟨9707⟩", truth: "42", source: "src", step: 4 },
  ]);
  const [first, second, third] = data.responses;
  // ln ratio = old − rollout, to 4 significant digits; logprobs and entropy to 3 decimals.
  assert.deepEqual(first?.lp, [-0.123, -2]);
  assert.deepEqual(first?.d, [Number((Math.fround(-0.1) - Math.fround(-0.12345)).toPrecision(4)), -0.5]);
  assert.deepEqual(first?.ent, [1.235, null]);
  // A constant per-token advantage (GRPO) is stored once.
  assert.equal(first?.adv, 0.5);
  assert.deepEqual(
    [first?.advantage, first?.reward, first?.score, first?.pred, first?.finish, first?.len, first?.status],
    [0.5, 0.9, 1, "42", "stop", 2, "ok"],
  );
  assert.deepEqual(second?.adv, [-0.25, 0.75]);
  assert.equal(second?.finish, "length");
  assert.equal(second?.round, 1);
  // Stages that did not run leave nothing behind (JSON drops the undefined fields).
  assert.deepEqual(JSON.parse(JSON.stringify(third)), {
    g: 1,
    row: 2,
    ids: [1, 2],
    lp: [-0.123, -2],
    finish: "stop",
    len: 2,
    round: 0,
  });

  // Without old logprobs the ratio comes from logprob_diff (rollout − old).
  const listOfFloats = new List(new Field("item", new Float32(), true));
  const diffOnly = new Table({
    response: vectorFromArray(["z"], new Utf8()),
    logprob_diff: vectorFromArray([Float32Array.from([0.5, -1])], listOfFloats),
  });
  const [only] = inspectorData(diffOnly, { title: "t", colorBy: "ratio", groupsPerPage: 3 }).responses;
  assert.deepEqual(only?.d, [-0.5, 1]);
  assert.deepEqual(only?.ids, []);
  assert.equal(only?.text, "z");
});

test("with a tokenizer: each id's text once in a shared vocabulary, split characters per response", () => {
  const qwen3 = Tokenizer.qwen3();
  const plain = qwen3.encode("Hello world Hello");
  const emoji = qwen3.encode(" 🎉 world");
  const table = rolloutsTable({
    step: 1,
    samples: [
      record({ response: Int32Array.from(plain), rolloutLogprobs: new Float32Array(plain.length) }),
      record({ response: Int32Array.from(emoji), rolloutLogprobs: new Float32Array(emoji.length) }),
    ],
  });
  const data = inspectorData(table, { tokenizer: qwen3 });
  const vocab = data.vocab as Record<number, string>;
  assert.equal(vocab[plain[0] as number], "Hello");
  assert.equal(vocab[plain[1] as number], " world");
  assert.equal(data.responses[0]?.px, undefined);
  // The emoji's first id gets "" and its last the whole character.
  const pieces = data.responses[1]?.ids.map(
    (id, t) => data.responses[1]?.px?.find(([i]) => i === t)?.[1] ?? vocab[id],
  );
  assert.deepEqual(pieces, qwen3.tokenPieces(emoji));
  assert.equal(pieces?.join(""), " 🎉 world");
  // No prompt text: the prompt's ids, decoded.
  assert.equal(data.groups[0]?.prompt, "Hello");
});

/** Script bodies as an HTML tokenizer splits them: each ends at the first `</script`. */
function scriptsOf(html: string): string[] {
  return [...html.matchAll(/<script[^>]*>([\s\S]*?)<\/script/gi)].map((m) => m[1] as string);
}

test("no text in the table can end the scripts early; the page is well formed", async () => {
  const hostile = "</script><script>alert(1)</script><!-- </SCRIPT > \u2028 \ud800";
  const table = rolloutsTable({
    step: 1,
    samples: [record({ uid: hostile, promptText: hostile, responseText: hostile, pred: hostile })],
  });
  const html = inspectorHtml(table, { title: `<b>${hostile}</b>` });
  const [json, script, ...rest] = scriptsOf(html);
  assert.deepEqual(rest, []);
  const data = JSON.parse(json as string);
  // Arrow stores UTF-8: a lone surrogate comes back as U+FFFD.
  const stored = hostile.replace("\ud800", "\ufffd");
  assert.equal(data.responses[0].text, stored);
  assert.equal(data.groups[0].uid, stored);
  assert.equal(data.title, `<b>${hostile}</b>`);
  new vm.Script(script as string);
  const dir = tempDir("inspect");
  try {
    const file = join(dir.path, "inspector.html");
    await writeInspector(file, table, { title: "hostile" });
    assert.deepEqual(readdirSync(dir.path), ["inspector.html"]);
    const structure = JSON.parse(runPython("html_check.py", [file])) as {
      doctype: string;
      title: string;
      unclosed: string[];
      stray_end_tags: string[];
      scripts: number;
      script_srcs: string[];
    };
    assert.equal(structure.doctype, "doctype html");
    assert.equal(structure.title, "hostile");
    assert.deepEqual(structure.unclosed, []);
    assert.deepEqual(structure.stray_end_tags, []);
    assert.equal(structure.scripts, 2);
    assert.deepEqual(structure.script_srcs, []);
    assert.ok(!readFileSync(file, "utf8").includes("http"), "the page names no URL");
  } finally {
    dir.cleanup();
  }
});

test("bad arguments are refused naming the field", () => {
  const table = rolloutsTable({ step: 1, samples: [record({})] });
  assert.throws(
    () => inspectorData(table, { colorBy: "reward" as ColorBy }),
    /options\.colorBy: expected one of advantage, logprob, entropy, ratio; got "reward"/,
  );
  assert.throws(
    () => inspectorData(table, { groupsPerPage: 0 }),
    /options\.groupsPerPage: expected an integer ≥ 1/,
  );
  assert.throws(() => inspect([] as unknown as Table), /expected an Arrow Table of rollouts/);
});

test("inspector() builds the view without showing it; inspect() outside a notebook shows nothing and returns nothing", () => {
  const table = rolloutsTable({ step: 2, samples: [record({}), record({ uid: "b" })] });
  const built = inspector(table, { title: "x" });
  assert.ok(built instanceof Inspector);
  assert.equal(built.show(), false);
  assert.equal(String(built), "Inspector(2 responses in 2 groups)");
  assert.match(
    built.html,
    /^<div class="tiller-inspector" id="tiller-inspector-[0-9a-f]{12}" data-testid="inspector">/,
  );
  assert.equal(scriptsOf(built.html).length, 2);
  assert.equal(inspect(table), undefined);
});
