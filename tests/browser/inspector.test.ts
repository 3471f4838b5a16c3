// The rollout inspector and the metrics report opened in headless Chromium: a real step's rollouts
// (tiny model, CPU) drawn as group cards that sort, recolour, filter and search; tables with nulls,
// missing columns and hostile text; a 2,000 × 500-token table; the view as a tslab output; and
// the plotly report drawing its traces. Every page must work offline and log no error.
import assert from "node:assert/strict";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Float64, Int32, Table, Utf8, vectorFromArray } from "apache-arrow";
import type { Page } from "playwright-core";
import { readSetupEnv, repoRoot } from "../../scripts/setup.js";
import { ExperimentRun } from "../../src/controller/experiment.js";
import { inspectorHtml, writeInspector, writeReport } from "../../src/notebook/index.js";
import { resolveConfig } from "../../src/rl/config.js";
import { type RolloutRecord, rolloutsTable } from "../../src/rl/rollouts.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { Tokenizer } from "../../src/tokenizer/index.js";
import { localRank } from "../../src/worker/local.js";
import { HeadlessBrowser, noChromium, type OpenedPage } from "../helpers/browser.js";
import { runPython, tempDir } from "../helpers/python.js";

// Runs in the page (the test's tsconfig has no DOM library).
declare function getComputedStyle(element: unknown): { backgroundColor: string };

const skip = noChromium();
const dir = tempDir("browser");
let browser: HeadlessBrowser | undefined;
let modelPath = "";
let rollouts: Table;
let metricsFile = "";

before(async () => {
  if (skip) return;
  browser = await HeadlessBrowser.launch();
  modelPath = join(dir.path, "model");
  await writeTinyModel(modelPath, { seed: 3 });
  const dataFile = writeNextDigitData(join(dir.path, "data"));
  const local = localRank();
  const run = await ExperimentRun.create(
    resolveConfig({
      name: "inspect",
      runDir: join(dir.path, "runs", "inspect"),
      seed: 7,
      model: { path: modelPath, dtype: "float32" },
      data: { train: dataFile, maxPromptTokens: 8 },
      promptsPerStep: 8,
      // Six tokens: some responses stop, some are cut at the limit.
      rollout: { samplesPerPrompt: 4, maxResponseTokens: 6 },
      tokensPerMicroBatch: 4096,
      optimizer: { lr: 3e-3, weightDecay: 0.01 },
      totalSteps: 2,
    }),
    local.call,
  );
  try {
    await run.runStep();
    await run.runStep();
    rollouts = run.rollouts();
    metricsFile = join(dir.path, "report.html");
    await writeReport(metricsFile, run.metrics, {
      title: "tiny next-digit run",
      charts: [["critic/score/mean"], ["actor/pg_loss", "actor/entropy"]],
      summary: { steps: run.step },
    });
  } finally {
    await run.close();
    local.dispose();
  }
});

after(async () => {
  await browser?.close();
  dir.cleanup();
});

async function open(file: string): Promise<OpenedPage> {
  assert.ok(browser, "the browser did not start");
  return browser.open(file);
}

function assertClean(opened: OpenedPage): void {
  assert.deepEqual(opened.errors, [], "console errors or exceptions on the page");
  assert.deepEqual(opened.remoteRequests, [], "the page asked the network for something");
}

interface CardView {
  uid: string;
  rewards: number[];
  lengths: number[];
  finishes: string[];
}

async function cards(page: Page): Promise<CardView[]> {
  return page.$$eval('[data-testid="group"]', (elements) =>
    elements.map((card) => {
      const responses = [...card.querySelectorAll('[data-testid="response"]')];
      const attr = (name: string) => responses.map((r) => r.getAttribute(name) as string);
      return {
        uid: card.getAttribute("data-uid") as string,
        rewards: attr("data-reward").map(Number),
        lengths: attr("data-length").map(Number),
        finishes: attr("data-finish"),
      };
    }),
  );
}

async function tokenBackgrounds(page: Page): Promise<string[]> {
  return page.$$eval('[data-testid="token"]', (spans) =>
    spans.map((s) => getComputedStyle(s).backgroundColor),
  );
}

const strings = (table: Table, name: string) => table.getChild(name)?.toArray() as (string | null)[];
const numbers = (table: Table, name: string) => Array.from(table.getChild(name)?.toArray() ?? [], Number);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const isSorted = (xs: number[], dir: 1 | -1) =>
  xs.every((x, i) => i === 0 || dir * (x - (xs[i - 1] as number)) >= 0);

test("a real step's rollouts: one card per group, sort, colour switch, filters and search", {
  skip,
}, async () => {
  const tokenizer = Tokenizer.fromFolder(modelPath);
  const file = join(dir.path, "inspector.html");
  await writeInspector(file, rollouts, { tokenizer });
  const opened = await open(file);
  const { page } = opened;
  try {
    const uids = strings(rollouts, "uid");
    const rewards = numbers(rollouts, "reward");
    const groupIds = [...new Set(uids)];
    const shown = await cards(page);
    assert.equal(shown.length, groupIds.length);
    assert.deepEqual(
      shown.map((c) => c.uid),
      groupIds,
    );
    assert.equal(await page.getByTestId("response").count(), rollouts.numRows);
    assert.equal(
      await page.getByTestId("group-prompt").first().textContent(),
      strings(rollouts, "prompt")[0] as string,
    );

    // Each token is its own span holding its text; together they are the decoded response.
    const ids = Array.from(rollouts.getChild("response_tokens")?.get(0)?.toArray() as Int32Array);
    const firstResponse = page.getByTestId("response").first();
    assert.equal(await firstResponse.locator(".ti-tokens").textContent(), tokenizer.decode(ids));
    assert.equal(await firstResponse.getByTestId("token").count(), ids.length);
    const tip = (await firstResponse.getByTestId("token").first().getAttribute("title")) as string;
    assert.ok(
      tip.startsWith(`${JSON.stringify(tokenizer.tokenPieces(ids)[0])}  id ${ids[0]}  #0\nlogprob `),
      tip,
    );
    assert.match(tip, /\nentropy \d/);
    assert.match(tip, /\nadvantage [+-]?\d/);
    assert.match(tip, /\nratio \d\.\d{4}/);

    // Colour switch: the same spans get other backgrounds, without a reload.
    const pressed = () =>
      page.locator('[data-testid^="color-by-"][aria-pressed="true"]').getAttribute("data-testid");
    assert.equal(await pressed(), "color-by-advantage");
    const byAdvantage = await tokenBackgrounds(page);
    await page.getByTestId("color-by-entropy").click();
    assert.equal(await pressed(), "color-by-entropy");
    const byEntropy = await tokenBackgrounds(page);
    await page.getByTestId("color-by-logprob").click();
    const byLogprob = await tokenBackgrounds(page);
    assert.equal(byEntropy.length, byAdvantage.length);
    assert.notDeepEqual(byEntropy, byAdvantage);
    assert.notDeepEqual(byLogprob, byEntropy);
    // Entropy is blue, logprob orange.
    assert.ok(
      byEntropy.every((c) => c.startsWith("rgba(31, 119, 180")),
      byEntropy[0],
    );
    assert.ok(
      byLogprob.every((c) => c.startsWith("rgba(255, 127, 14")),
      byLogprob[0],
    );
    await page.getByTestId("color-by-ratio").click();
    assert.equal(await pressed(), "color-by-ratio");
    assert.match((await page.getByTestId("legend").textContent()) as string, /\d\.\d{3}/);

    // Sort by reward, both ways: within each card and across cards (by the card's mean).
    await page.getByTestId("sort").selectOption("reward-asc");
    const ascending = await cards(page);
    await page.getByTestId("sort").selectOption("reward-desc");
    const descending = await cards(page);
    for (const c of ascending) assert.ok(isSorted(c.rewards, 1), JSON.stringify(c));
    for (const c of descending) assert.ok(isSorted(c.rewards, -1), JSON.stringify(c));
    assert.ok(
      isSorted(
        ascending.map((c) => mean(c.rewards)),
        1,
      ),
    );
    assert.ok(
      isSorted(
        descending.map((c) => mean(c.rewards)),
        -1,
      ),
    );
    if (new Set(rewards).size > 1) assert.notDeepEqual(ascending, descending);
    await page.getByTestId("sort").selectOption("length-desc");
    const byLength = await cards(page);
    for (const c of byLength) assert.ok(isSorted(c.lengths, -1), JSON.stringify(c));
    await page.getByTestId("sort").selectOption("original");
    assert.deepEqual(
      (await cards(page)).map((c) => c.uid),
      groupIds,
    );

    // Truncated only.
    const truncated = strings(rollouts, "finish_reason").filter((f) => f === "length").length;
    await page.getByTestId("filter-truncated").check();
    const truncatedCards = await cards(page);
    assert.equal(truncatedCards.flatMap((c) => c.finishes).length, truncated);
    assert.ok(truncatedCards.every((c) => c.finishes.every((f) => f === "length")));
    await page.getByTestId("filter-truncated").uncheck();

    // Zero-spread groups: every reward of the group equal.
    const byGroup = new Map<string, number[]>();
    uids.forEach((uid, i) => {
      byGroup.set(uid as string, [...(byGroup.get(uid as string) ?? []), rewards[i] as number]);
    });
    const zero = [...byGroup.values()].filter((rs) => rs.every((r) => r === rs[0])).length;
    await page.getByTestId("filter-zero-spread").selectOption("hide");
    assert.equal(await page.getByTestId("group").count(), groupIds.length - zero);
    assert.equal(await page.getByTestId("zero-spread").count(), 0);
    await page.getByTestId("filter-zero-spread").selectOption("only");
    assert.equal(await page.getByTestId("group").count(), zero);
    assert.equal(await page.getByTestId("zero-spread").count(), zero);
    await page.getByTestId("filter-zero-spread").selectOption("all");

    // reward ≥ 1
    await page.getByTestId("filter-min-reward").fill("1");
    const rewarded = (await cards(page)).flatMap((c) => c.rewards);
    assert.equal(rewarded.length, rewards.filter((r) => r >= 1).length);
    await page.getByTestId("filter-min-reward").fill("");

    // Search: the responses whose text holds the query, case-insensitive.
    const texts = strings(rollouts, "response").map((t) => (t ?? "").toLowerCase());
    const query = [...texts].sort((a, b) => b.length - a.length)[0]?.slice(0, 3) as string;
    const matching = texts.filter((t) => t.includes(query)).length;
    assert.ok(query.length > 0 && matching < texts.length, `query ${query}`);
    await page.getByTestId("search").fill(query);
    assert.equal(await page.getByTestId("response").count(), matching);
    const matchedTexts = await page.getByTestId("response").locator(".ti-tokens").allTextContents();
    assert.ok(matchedTexts.every((t) => t.toLowerCase().includes(query)));
    await page.getByTestId("search").fill("");
    assert.equal(await page.getByTestId("response").count(), rollouts.numRows);

    await opened.screenshot("inspector-real-step");
    assertClean(opened);
  } finally {
    await opened.close();
  }
});

function record(overrides: Partial<RolloutRecord>): RolloutRecord {
  return {
    uid: "g0",
    round: 0,
    prompt: Int32Array.from([5, 6]),
    response: Int32Array.from([7, 8, 9]),
    rolloutLogprobs: Float32Array.from([-0.1, -2, -4]),
    finishReason: "stop",
    dataSource: "hand",
    groundTruth: "x",
    ...overrides,
  };
}

test("the inspector finds the special tokens it shows (<eos>), explains its labels and flags a <pad> inside a response, not one that ended it", {
  skip,
}, async () => {
  const tokenizer = Tokenizer.fromFolder(modelPath);
  const [pad, eos] = [tokenizer.padTokenId as number, tokenizer.eosTokenIds[0] as number];
  const digit = (d: number) => tokenizer.encode(String(d), { addSpecialTokens: false })[0] as number;
  const table = rolloutsTable({
    step: 3,
    samples: [
      record({ uid: "3.0.1", response: Int32Array.from([digit(1), eos]), responseText: "1" }),
      record({
        uid: "3.0.1",
        response: Int32Array.from([digit(2), pad, digit(3)]),
        responseText: "23",
        finishReason: "length",
      }),
      record({
        uid: "3.0.2",
        response: Int32Array.from([digit(4), digit(5)]),
        responseText: "45",
        finishReason: "length",
      }),
      // Rollouts stop at a sampled <pad> as at <eos>: one that ends a response is its end, no warning.
      record({ uid: "3.0.2", response: Int32Array.from([digit(6), pad]), responseText: "6" }),
    ],
  });
  const file = join(dir.path, "inspector-specials.html");
  await writeInspector(file, table, { tokenizer });
  const opened = await open(file);
  const { page } = opened;
  try {
    await page.getByTestId("search").fill("<eos>");
    assert.equal(await page.getByTestId("response").count(), 1, "the <eos> shown as a token is found");
    await page.getByTestId("search").fill("<pad>");
    assert.equal(await page.getByTestId("response").count(), 2, "both responses that show a <pad>");
    await page.getByTestId("search").fill("");
    assert.equal(await page.getByTestId("pad-warning").count(), 1);
    assert.equal(await page.getByTestId("pad-warning").textContent(), "<pad> at token 1");
    assert.match(
      (await page.getByTestId("pad-banner").textContent()) as string,
      /^1 of 4 responses contain the padding token/,
    );
    const uidTitle = (await page.locator(".ti-uid").first().getAttribute("title")) as string;
    assert.match(uidTitle, /step\.round\.prompt/, "the group id says what its parts are");
    assert.equal(await page.locator(".ti-uid").first().textContent(), "group 3.0.1");
    const truncated = page.locator(".ti-length").first();
    assert.equal(await truncated.textContent(), "truncated");
    assert.match((await truncated.getAttribute("title")) as string, /maxResponseTokens/);
    await opened.screenshot("inspector-specials");
    assertClean(opened);
  } finally {
    await opened.close();
  }
});

test("nulls, missing columns and hostile text: no tokenizer, ⟨id⟩ only where there is no text", {
  skip,
}, async () => {
  const hostile = "</script><script>alert('x')</script><!-- <b>bold</b>";
  const table = rolloutsTable({
    step: 3,
    samples: [
      record({ responseText: hostile, promptText: "<!-- prompt", score: 1, shapedScore: 1 }),
      record({ responseText: undefined, score: 0, shapedScore: 0 }),
      record({
        uid: "g1",
        responseText: "",
        response: Int32Array.from([]),
        rolloutLogprobs: new Float32Array(),
      }),
    ],
  });
  const file = join(dir.path, "edge.html");
  await writeInspector(file, table);
  const opened = await open(file);
  const { page } = opened;
  try {
    assert.equal(await page.getByTestId("group").count(), 2);
    const [withText, withoutText, empty] = await page.getByTestId("response").all();
    assert.ok(withText && withoutText && empty);
    // Text as text (never as markup), and one coloured cell per token beside it.
    assert.equal(await withText.locator(".ti-text").textContent(), hostile);
    assert.equal(await withText.locator(".ti-strip [data-testid=token]").count(), 3);
    assert.equal(await withoutText.locator(".ti-tokens").textContent(), "⟨7⟩⟨8⟩⟨9⟩");
    assert.match((await empty.textContent()) as string, /\(empty\)/);
    assert.equal(await page.getByTestId("group-prompt").first().textContent(), "<!-- prompt");
    // No advantages, old logprobs or entropy: those switches are off and logprob is shown.
    for (const m of ["advantage", "entropy", "ratio"])
      assert.ok(await page.getByTestId(`color-by-${m}`).isDisabled());
    assert.equal(await page.getByTestId("color-by-logprob").getAttribute("aria-pressed"), "true");
    const backgrounds = await tokenBackgrounds(page);
    assert.equal(new Set(backgrounds).size, 3, backgrounds.join(" "));
    await opened.screenshot("inspector-edge-cases");
    assertClean(opened);
  } finally {
    await opened.close();
  }

  // A table with only some columns, and one with no rows.
  const sparse = new Table({
    response: vectorFromArray(["a", null], new Utf8()),
    reward: vectorFromArray([null, 2], new Float64()),
    step: vectorFromArray([1, 1], new Int32()),
  });
  for (const [name, t] of [
    ["sparse", sparse],
    ["empty", sparse.slice(0, 0)],
  ] as const) {
    const path = join(dir.path, `${name}.html`);
    writeFileSync(path, inspectorHtml(t));
    const page2 = await open(path);
    try {
      assert.equal(await page2.page.getByTestId("group").count(), t.numRows);
      if (t.numRows === 0) await page2.page.getByText("No rollouts in this table.").waitFor();
      else
        assert.deepEqual(
          (await cards(page2.page)).map((c) => c.uid),
          ["row 0", "row 1"],
        );
      assertClean(page2);
    } finally {
      await page2.close();
    }
  }
});

test("2,000 responses × 500 tokens: a page of reasonable size that draws one page of groups at a time", {
  skip,
}, async () => {
  const tokenizer = Tokenizer.qwen3();
  const text = readFileSync(join(repoRoot, "README.md"), "utf8").repeat(20);
  const corpus = Int32Array.from(tokenizer.encode(text));
  const tokens = 500;
  assert.ok(corpus.length > 2000 + tokens);
  const samples: RolloutRecord[] = [];
  for (let i = 0; i < 2000; i++) {
    const response = corpus.slice(i, i + tokens);
    const logprobs = Float32Array.from(response, (_, t) => -((i * 7 + t * 13) % 50) / 10);
    samples.push(
      record({
        uid: `1.${Math.floor(i / 8)}`,
        response,
        rolloutLogprobs: logprobs,
        oldLogprobs: logprobs.map((v, t) => v + (t % 3) * 1e-3),
        entropy: logprobs.map((v) => -v / 2),
        advantages: new Float32Array(tokens).fill((i % 8) - 3.5),
        finishReason: i % 5 === 0 ? "length" : "stop",
        promptText: `prompt ${Math.floor(i / 8)}`,
        responseText: tokenizer.decode(Array.from(response)),
        score: i % 8 < 3 ? 1 : 0,
        shapedScore: i % 8 < 3 ? 1 : 0,
      }),
    );
  }
  const table = rolloutsTable({ step: 1, samples });
  const file = join(dir.path, "large.html");
  let started = performance.now();
  await writeInspector(file, table, { tokenizer });
  const writeMs = performance.now() - started;
  const sizeMb = statSync(file).size / 2 ** 20;
  // About 23 bytes a token: the id and three rounded per-token numbers; token texts once, in the vocabulary.
  assert.ok(sizeMb < 40, `${sizeMb.toFixed(1)} MiB`);
  started = performance.now();
  const opened = await open(file);
  const { page } = opened;
  try {
    await page.getByTestId("page-info").waitFor();
    const loadMs = performance.now() - started;
    assert.equal(await page.getByTestId("group").count(), 12);
    assert.equal(await page.getByTestId("token").count(), 12 * 8 * tokens);
    assert.equal(await page.getByTestId("page-info").textContent(), "page 1/21");
    await page.getByTestId("page-next").click();
    assert.equal(await page.getByTestId("page-info").textContent(), "page 2/21");
    assert.equal(await page.getByTestId("group").first().getAttribute("data-uid"), "1.12");
    await page.getByTestId("filter-truncated").check();
    const truncatedOnPage = samples.slice(0, 12 * 8).filter((r) => r.finishReason === "length").length;
    assert.equal(await page.getByTestId("response").count(), truncatedOnPage);
    assert.equal(await page.getByTestId("page-info").textContent(), "page 1/21");
    await page.getByTestId("color-by-ratio").click();
    await opened.screenshot("inspector-large");
    assertClean(opened);
    process.stdout.write(
      `# large table: ${sizeMb.toFixed(1)} MiB written in ${writeMs.toFixed(0)} ms, opened in ${loadMs.toFixed(0)} ms\n`,
    );
  } finally {
    await opened.close();
  }
});

test("inspect() in the tslab kernel shows one output (HTML and text, no stray printed line) that draws in Chromium", {
  skip,
}, async () => {
  const jupyterPath = readSetupEnv().jupyterPath;
  assert.ok(
    jupyterPath,
    "setup registered no Jupyter kernel (.tiller/env.json has no jupyterPath): run `npm run setup`",
  );
  const index = JSON.stringify(join(repoRoot, "dist", "src", "index.js"));
  const cells = [
    `import { notebook, rl } from ${index};
const sample = (uid: string, score: number) => ({ uid, round: 0, prompt: Int32Array.from([1]),
  response: Int32Array.from([2, 3]), rolloutLogprobs: Float32Array.from([-1, -2]), finishReason: "stop" as const,
  dataSource: "nb", groundTruth: "1", responseText: "ab", score, shapedScore: score,
  advantages: Float32Array.from([score - 0.5, score - 0.5]) });
const table = rl.rolloutsTable({ step: 1, samples: [sample("a", 0), sample("a", 1), sample("b", 1)] });
notebook.inspect(table, { title: "from the kernel" })`,
  ];
  const cellsFile = join(dir.path, "cells.json");
  writeFileSync(cellsFile, JSON.stringify(cells));
  const outputsFile = join(dir.path, "outputs.json");
  runPython("run_notebook.py", [jupyterPath, repoRoot, cellsFile, outputsFile]);
  const outputs = JSON.parse(readFileSync(outputsFile, "utf8")) as {
    output_type: string;
    text?: string;
    data?: Record<string, string>;
  }[][];
  const [shown, ...rest] = outputs[0] ?? [];
  assert.equal(shown?.output_type, "display_data");
  assert.deepEqual(Object.keys(shown?.data ?? {}).sort(), ["text/html", "text/plain"]);
  assert.equal(shown?.data?.["text/plain"], "Inspector(3 responses in 2 groups)");
  assert.deepEqual(rest, [], 'no stray text output ("Inspector(…)") under the view');
  const file = join(dir.path, "from-kernel.html");
  writeFileSync(file, `<!doctype html><meta charset="utf-8"><body>${shown?.data?.["text/html"]}</body>`);
  const opened = await open(file);
  try {
    assert.equal(await opened.page.getByTestId("group").count(), 2);
    assert.equal(await opened.page.locator(".ti-title").textContent(), "from the kernel");
    await opened.screenshot("inspector-notebook-output");
    assertClean(opened);
  } finally {
    await opened.close();
  }
});

test("the metrics report draws its plotly traces offline", { skip }, async () => {
  const opened = await open(metricsFile);
  try {
    const traces = opened.page.locator(".tiller-chart .scatterlayer .trace");
    await traces.first().waitFor();
    // score; pg_loss and entropy; the timings chart's throughput line (its stages are bars); the
    // memory chart's perf/memory/{parameters,gradients,optimizer,buffers,activations_peak,kv_cache}_bytes
    // and perf/max_memory_{allocated,reserved}_gb (on CPU too: the engine counts its CPU tensors).
    assert.equal(await traces.count(), 12);
    assert.ok(
      (await opened.page.locator(".tiller-chart .barlayer .trace").count()) >= 2,
      "stage timings stacked",
    );
    assert.equal(await opened.page.locator(".tiller-chart .main-svg").first().isVisible(), true);
    await opened.screenshot("metrics-report");
    assertClean(opened);
  } finally {
    await opened.close();
  }
});
