// The rollout inspector's browser side: its CSS and the script that builds the view from the data
// that src/notebook/inspect.ts embeds as JSON. Plain ES2017 with no libraries, so the page works
// offline, in a notebook output and in a saved file alike. Every control carries a `data-testid`
// (tests/browser/inspector.test.ts clicks them).

/** The styles, each rule under `.tiller-inspector` so that nothing leaks into a notebook's page. */
export const inspectorCss = `
.tiller-inspector { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; }
.tiller-inspector .ti-head { display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap; }
.tiller-inspector .ti-title { font-size: 16px; font-weight: 600; margin: 0; }
.tiller-inspector .ti-summary { color: #555; }
.tiller-inspector .ti-bar { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; padding: 6px 8px;
  margin-top: 6px; background: #f5f6f8; border: 1px solid #d8dbe0; border-radius: 6px; position: sticky; top: 0; z-index: 2; }
.tiller-inspector .ti-bar label { display: inline-flex; align-items: center; gap: 4px; }
.tiller-inspector .ti-bar input[type="search"] { width: 14em; }
.tiller-inspector .ti-bar input[type="number"] { width: 5em; }
.tiller-inspector .ti-seg { display: inline-flex; }
.tiller-inspector .ti-seg button { border: 1px solid #b8bcc4; background: #fff; padding: 1px 8px; margin-left: -1px;
  cursor: pointer; font: inherit; }
.tiller-inspector .ti-seg button:first-child { border-radius: 4px 0 0 4px; margin-left: 0; }
.tiller-inspector .ti-seg button:last-child { border-radius: 0 4px 4px 0; }
.tiller-inspector .ti-seg button[aria-pressed="true"] { background: #2f3b52; border-color: #2f3b52; color: #fff; }
.tiller-inspector .ti-seg button:disabled { color: #aaa; cursor: not-allowed; }
.tiller-inspector .ti-legend { display: inline-flex; align-items: center; gap: 4px; color: #555; font-size: 12px; }
.tiller-inspector .ti-swatch { display: inline-block; width: 18px; height: 12px; border: 1px solid #ddd; }
.tiller-inspector .ti-pager button { font: inherit; }
.tiller-inspector .ti-groups { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 10px;
  margin-top: 10px; align-items: start; }
.tiller-inspector .ti-group { border: 1px solid #c9ced8; border-radius: 6px; background: #fff; padding: 6px 8px; min-width: 0; }
.tiller-inspector .ti-group.ti-zero { border-style: dashed; background: #fbfbfb; }
.tiller-inspector .ti-ghead { display: flex; gap: 6px; align-items: baseline; flex-wrap: wrap; }
.tiller-inspector .ti-uid { font-weight: 600; }
.tiller-inspector .ti-warn { background: #fde2c4; color: #7a3b00; }
.tiller-inspector .ti-warnbar { background: #fff4e0; border: 1px solid #f0b46a; color: #6b3a00; padding: 4px 8px; margin: 4px 0; border-radius: 4px; }
.tiller-inspector .ti-badge { font-size: 11px; padding: 0 6px; border-radius: 8px; background: #e8e9ed; color: #444; }
.tiller-inspector .ti-gstats, .tiller-inspector .ti-truth, .tiller-inspector .ti-meta { color: #555; font-size: 12px; }
.tiller-inspector .ti-prompt, .tiller-inspector .ti-tokens, .tiller-inspector .ti-text {
  white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12px; overflow: auto; }
.tiller-inspector .ti-images { display: flex; gap: 6px; flex-wrap: wrap; margin: 4px 0; }
.tiller-inspector .ti-images img { max-height: 160px; max-width: 240px; min-width: 48px; image-rendering: pixelated; border: 1px solid #ccd; border-radius: 3px; }
.tiller-inspector .ti-prompt { background: #f2f3f5; padding: 3px 6px; border-radius: 4px; max-height: 8em; margin: 4px 0; }
.tiller-inspector .ti-tokens, .tiller-inspector .ti-text { max-height: 22em; }
.tiller-inspector .ti-resp { border-top: 1px solid #eceef2; padding-top: 4px; margin-top: 4px; }
.tiller-inspector .ti-tok { border-radius: 2px; }
.tiller-inspector .ti-tokens .ti-tok { box-shadow: inset -1px 0 0 rgba(0, 0, 0, 0.12); }
.tiller-inspector .ti-tok.ti-empty { display: inline-block; min-width: 3px; height: 1em; vertical-align: text-bottom; }
.tiller-inspector .ti-strip { display: flex; flex-wrap: wrap; gap: 1px; margin-top: 3px; }
.tiller-inspector .ti-strip .ti-tok { display: inline-block; width: 8px; height: 10px; outline: 1px solid #e4e6ea; }
.tiller-inspector .ti-length { color: #b35c00; font-weight: 600; }
.tiller-inspector .ti-none { color: #888; font-style: italic; }
`;

/**
 * A JS function expression `(root, data) => void` that builds the view inside `root` from the
 * embedded data (the shape of `InspectorData` in inspect.ts). String.raw keeps its escapes as
 * written; the script uses no template literals of its own.
 */
export const inspectorScript = String.raw`function (root, data) {
  "use strict";
  var R = data.responses;
  var G = data.groups;
  var metricNames = ["advantage", "logprob", "entropy", "ratio"];
  var metricLabels = { advantage: "advantage", logprob: "logprob", entropy: "entropy", ratio: "ratio" };
  var sorts = [
    ["original", "original order"],
    ["reward-desc", "reward \u2193"],
    ["reward-asc", "reward \u2191"],
    ["length-desc", "length \u2193"],
    ["length-asc", "length \u2191"],
    ["advantage-desc", "advantage \u2193"],
    ["advantage-asc", "advantage \u2191"]
  ];
  var state = { colorBy: data.colorBy, sort: "original", truncatedOnly: false, zeroSpread: "all",
    minReward: null, search: "", page: 0 };
  var painted = [];

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function testid(e, id) { e.setAttribute("data-testid", id); return e; }
  function at(a, t) { return a == null || t >= a.length ? null : a[t]; }
  function fmt(v, digits) {
    if (v == null) return "\u2014";
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(digits == null ? 3 : digits);
  }
  function signed(v) { return v == null ? "\u2014" : (v > 0 ? "+" : "") + fmt(v); }
  function rewardOf(r) { return r.reward != null ? r.reward : r.score != null ? r.score : null; }
  function lengthOf(r) { return r.len != null ? r.len : r.ids.length; }

  // Pieces that differ from the shared vocabulary (a character split across ids) are per response.
  function pieceOf(r, t) {
    if (r.px) {
      if (!r.pxMap) { r.pxMap = {}; r.px.forEach(function (p) { r.pxMap[p[0]] = p[1]; }); }
      if (Object.prototype.hasOwnProperty.call(r.pxMap, t)) return r.pxMap[t];
    }
    return data.vocab[r.ids[t]];
  }
  // What a search looks in: the response text and the tokens as shown (special ones like <eos>
  // included, which the decoded text leaves out), so that anything on screen can be found.
  function textOf(r) {
    if (r.lower == null) {
      var shown = r.ids.map(function (id, t) {
        var piece = data.vocab ? pieceOf(r, t) : null;
        return piece == null ? "\u27e8" + id + "\u27e9" : piece;
      }).join("");
      r.lower = ((r.text || "") + "\n" + shown).toLowerCase();
    }
    return r.lower;
  }

  function tokenValue(r, metric, t) {
    if (metric === "advantage") return typeof r.adv === "number" ? r.adv : at(r.adv, t);
    if (metric === "logprob") return at(r.lp, t);
    if (metric === "entropy") return at(r.ent, t);
    var d = at(r.d, t);
    return d == null ? null : Math.exp(d);
  }
  var available = {};
  var scale = { advantage: 0, entropy: 0, ratio: 0 };
  R.forEach(function (r) {
    if (r.adv != null) available.advantage = true;
    if (r.lp != null) available.logprob = true;
    if (r.ent != null) available.entropy = true;
    if (r.d != null) available.ratio = true;
    [].concat(r.adv == null ? [] : r.adv).forEach(function (v) {
      if (v != null) scale.advantage = Math.max(scale.advantage, Math.abs(v));
    });
    (r.ent || []).forEach(function (v) { if (v != null) scale.entropy = Math.max(scale.entropy, v); });
    (r.d || []).forEach(function (v) { if (v != null) scale.ratio = Math.max(scale.ratio, Math.abs(v)); });
  });
  if (!(scale.advantage > 0)) scale.advantage = 1;
  if (!(scale.entropy > 0)) scale.entropy = 1;
  // |ln ratio| of full colour: the largest seen, but float noise (< 0.01) stays white.
  scale.ratio = Math.min(Math.max(scale.ratio, 0.01), 5);
  if (!available[state.colorBy]) {
    state.colorBy = metricNames.filter(function (m) { return available[m]; })[0] || state.colorBy;
  }

  function rgba(rgb, strength) {
    var a = Math.round(Math.min(1, Math.max(0, strength)) * 0.7 * 1000) / 1000;
    return "rgba(" + rgb + "," + a + ")";
  }
  function colour(metric, v) {
    if (v == null || !isFinite(v)) return "";
    if (metric === "advantage") return rgba(v >= 0 ? "44,160,44" : "214,39,40", Math.abs(v) / scale.advantage);
    if (metric === "logprob") return rgba("255,127,14", 1 - Math.exp(v));
    if (metric === "entropy") return rgba("31,119,180", v / scale.entropy);
    var l = Math.log(v);
    return rgba(l >= 0 ? "148,103,189" : "23,190,207", Math.abs(l) / scale.ratio);
  }
  var legendStops = {
    advantage: function () { var s = scale.advantage; return [-s, -s / 2, 0, s / 2, s].map(function (v) { return [v, signed(v)]; }); },
    logprob: function () { return [1, 0.75, 0.5, 0.25, 0].map(function (p) { return [Math.log(Math.max(p, 1e-12)), "p " + p]; }); },
    entropy: function () { var s = scale.entropy; return [0, s / 4, s / 2, 3 * s / 4, s].map(function (v) { return [v, fmt(v, 2)]; }); },
    ratio: function () { var s = scale.ratio; return [-s, -s / 2, 0, s / 2, s].map(function (l) { return [Math.exp(l), fmt(Math.exp(l), 3)]; }); }
  };

  function tooltip(r, t, piece) {
    var lines = [];
    var head = piece == null ? "" : JSON.stringify(piece) + "  ";
    lines.push(head + "id " + r.ids[t] + "  #" + t);
    var lp = at(r.lp, t);
    if (lp != null) lines.push("logprob " + fmt(lp) + "  (p " + fmt(Math.exp(lp)) + ")");
    var d = at(r.d, t);
    if (d != null && lp != null) lines.push("old logprob " + fmt(lp + d));
    var ent = at(r.ent, t);
    if (ent != null) lines.push("entropy " + fmt(ent));
    var adv = tokenValue(r, "advantage", t);
    if (adv != null) lines.push("advantage " + signed(adv));
    if (d != null) lines.push("ratio " + Math.exp(d).toFixed(4) + "  (\u03c0old / \u03c0rollout)");
    return lines.join("\n");
  }

  // Group statistics over all of a group's responses, whatever is filtered.
  G.forEach(function (g) { g.members = []; });
  R.forEach(function (r, i) { G[r.g].members.push(i); });
  G.forEach(function (g) {
    var rewards = g.members.map(function (i) { return rewardOf(R[i]); });
    var known = rewards.filter(function (v) { return v != null; });
    g.mean = known.length ? known.reduce(function (a, b) { return a + b; }, 0) / known.length : null;
    g.min = known.length ? Math.min.apply(null, known) : null;
    g.max = known.length ? Math.max.apply(null, known) : null;
    // Every reward known and equal: GRPO gives such a group no signal.
    g.zero = known.length > 0 && known.length === rewards.length && g.min === g.max;
  });

  // ---- controls ----
  root.textContent = "";
  var head = el("div", "ti-head");
  head.appendChild(el("h3", "ti-title", data.title));
  var summary = testid(el("span", "ti-summary"), "summary");
  head.appendChild(summary);
  root.appendChild(head);
  var bar = el("div", "ti-bar");
  root.appendChild(bar);

  var colourBox = el("span", "ti-seg");
  testid(colourBox, "color-by");
  var colourButtons = {};
  metricNames.forEach(function (m) {
    var b = testid(el("button", null, metricLabels[m]), "color-by-" + m);
    b.type = "button";
    b.disabled = !available[m];
    b.title = available[m] ? "colour tokens by " + m : "no " + m + " values in this table";
    b.addEventListener("click", function () { state.colorBy = m; paint(); });
    colourButtons[m] = b;
    colourBox.appendChild(b);
  });
  var colourLabel = el("label", null, "colour ");
  colourLabel.appendChild(colourBox);
  bar.appendChild(colourLabel);

  var sortSelect = testid(el("select"), "sort");
  sorts.forEach(function (s) { var o = el("option", null, s[1]); o.value = s[0]; sortSelect.appendChild(o); });
  sortSelect.addEventListener("change", function () { state.sort = sortSelect.value; state.page = 0; render(); });
  var sortLabel = el("label", null, "sort ");
  sortLabel.appendChild(sortSelect);
  bar.appendChild(sortLabel);

  var truncated = testid(el("input"), "filter-truncated");
  truncated.type = "checkbox";
  truncated.addEventListener("change", function () { state.truncatedOnly = truncated.checked; state.page = 0; render(); });
  var truncatedLabel = el("label");
  truncatedLabel.appendChild(truncated);
  truncatedLabel.appendChild(document.createTextNode("truncated only"));
  bar.appendChild(truncatedLabel);

  var zeroSelect = testid(el("select"), "filter-zero-spread");
  [["all", "all"], ["hide", "hide zero-spread"], ["only", "zero-spread only"]].forEach(function (s) {
    var o = el("option", null, s[1]); o.value = s[0]; zeroSelect.appendChild(o);
  });
  zeroSelect.title = "zero-spread: every response of the group got the same reward";
  zeroSelect.addEventListener("change", function () { state.zeroSpread = zeroSelect.value; state.page = 0; render(); });
  var zeroLabel = el("label", null, "groups ");
  zeroLabel.appendChild(zeroSelect);
  bar.appendChild(zeroLabel);

  var minReward = testid(el("input"), "filter-min-reward");
  minReward.type = "number";
  minReward.step = "any";
  minReward.placeholder = "any";
  minReward.addEventListener("input", function () {
    var v = minReward.value === "" ? null : Number(minReward.value);
    state.minReward = v != null && isFinite(v) ? v : null;
    state.page = 0;
    render();
  });
  var minLabel = el("label", null, "reward \u2265 ");
  minLabel.appendChild(minReward);
  bar.appendChild(minLabel);

  var search = testid(el("input"), "search");
  search.type = "search";
  search.placeholder = "search responses";
  search.addEventListener("input", function () { state.search = search.value; state.page = 0; render(); });
  bar.appendChild(search);

  var pager = el("span", "ti-pager");
  var prev = testid(el("button", null, "\u2039 prev"), "page-prev");
  var pageInfo = testid(el("span", null, ""), "page-info");
  var next = testid(el("button", null, "next \u203a"), "page-next");
  prev.type = next.type = "button";
  prev.addEventListener("click", function () { state.page--; render(); });
  next.addEventListener("click", function () { state.page++; render(); });
  pager.appendChild(prev);
  pager.appendChild(document.createTextNode(" "));
  pager.appendChild(pageInfo);
  pager.appendChild(document.createTextNode(" "));
  pager.appendChild(next);
  bar.appendChild(pager);

  var legend = testid(el("span", "ti-legend"), "legend");
  bar.appendChild(legend);

  var padded = R.filter(function (r) { return r.padAt != null; }).length;
  if (padded) {
    var warn = testid(el("div", "ti-warnbar", padded + " of " + R.length + " responses contain the padding " +
      "token before their end: tiller's rollouts stop at a sampled <pad> as at an eos, so these went on " +
      "past it (a table from another sampler, or one whose stop ids leave the pad out)."),
      "pad-banner");
    root.appendChild(warn);
  }

  var grid = el("div", "ti-groups");
  root.appendChild(grid);

  // ---- filtering and sorting ----
  function sortKey(r, key) {
    if (key === "reward") return rewardOf(r);
    if (key === "length") return lengthOf(r);
    return r.advantage != null ? r.advantage : typeof r.adv === "number" ? r.adv : at(r.adv, 0);
  }
  // Nulls last in either direction; ties keep the table's order.
  function compare(a, b, dir) {
    if (a.k == null || b.k == null) return a.k == null ? (b.k == null ? a.i - b.i : 1) : -1;
    return a.k === b.k ? a.i - b.i : dir * (a.k - b.k);
  }
  function visible() {
    var q = state.search.toLowerCase();
    var out = [];
    G.forEach(function (g, gi) {
      if (state.zeroSpread === "hide" && g.zero) return;
      if (state.zeroSpread === "only" && !g.zero) return;
      var rs = g.members.filter(function (i) {
        var r = R[i];
        if (state.truncatedOnly && r.finish !== "length") return false;
        if (state.minReward != null) { var w = rewardOf(r); if (w == null || w < state.minReward) return false; }
        return !q || textOf(r).indexOf(q) >= 0;
      });
      if (rs.length) out.push({ g: gi, rs: rs });
    });
    if (state.sort !== "original") {
      var parts = state.sort.split("-");
      var key = parts[0];
      var dir = parts[1] === "asc" ? 1 : -1;
      out.forEach(function (v) {
        var keyed = v.rs.map(function (i) { return { i: i, k: sortKey(R[i], key) }; });
        keyed.sort(function (a, b) { return compare(a, b, dir); });
        v.rs = keyed.map(function (x) { return x.i; });
        var known = keyed.filter(function (x) { return x.k != null; });
        v.k = known.length ? known.reduce(function (s, x) { return s + x.k; }, 0) / known.length : null;
        v.i = v.g;
      });
      out.sort(function (a, b) { return compare(a, b, dir); });
    }
    return out;
  }

  // ---- drawing ----
  function tokenSpan(r, ri, t, text, cls) {
    var s = el("span", cls, text);
    s.setAttribute("data-testid", "token");
    s.title = tooltip(r, t, data.vocab ? pieceOf(r, t) : null);
    painted.push([s, ri, t]);
    return s;
  }
  function responseView(ri) {
    var r = R[ri];
    var box = testid(el("div", "ti-resp"), "response");
    var reward = rewardOf(r);
    box.setAttribute("data-reward", reward == null ? "" : String(reward));
    box.setAttribute("data-length", String(lengthOf(r)));
    var adv = sortKey(r, "advantage");
    box.setAttribute("data-advantage", adv == null ? "" : String(adv));
    if (r.finish != null) box.setAttribute("data-finish", r.finish);
    var meta = el("div", "ti-meta");
    var parts = [];
    var rewardSpan = testid(el("b", null, "reward " + fmt(reward)), "reward");
    meta.appendChild(rewardSpan);
    if (r.score != null && r.reward != null && r.score !== r.reward) parts.push("score " + fmt(r.score));
    parts.push("adv " + signed(adv));
    parts.push(lengthOf(r) + " tok");
    if (r.pred != null) parts.push("extracted answer " + JSON.stringify(r.pred));
    if (r.status != null && r.status !== "ok") parts.push("reward " + r.status);
    if (r.round != null && r.round > 0) parts.push("round " + r.round);
    meta.appendChild(document.createTextNode(" \u00b7 " + parts.join(" \u00b7 ") + " \u00b7 "));
    var finishText = r.finish == null ? "\u2014" : r.finish === "length" ? "truncated" : r.finish === "stop" ? "ended" : r.finish;
    var finish = el("span", r.finish === "length" ? "ti-length" : null, finishText);
    finish.title = r.finish === "length" ? "truncated: it hit maxResponseTokens (finish_reason \"length\")"
      : r.finish === "stop" ? "ended with an end-of-sequence token (finish_reason \"stop\")" : "finish_reason";
    meta.appendChild(finish);
    if (r.padAt != null) {
      var pad = testid(el("span", "ti-badge ti-warn", "<pad> at token " + r.padAt), "pad-warning");
      pad.title = "the sampler produced the padding token inside the response: a sampling defect " +
        "(padding should never be sampled); the tokens after it are still trained on";
      meta.appendChild(document.createTextNode(" "));
      meta.appendChild(pad);
    }
    box.appendChild(meta);
    if (r.ids.length && data.vocab) {
      var tokens = el("div", "ti-tokens");
      r.ids.forEach(function (id, t) {
        var piece = pieceOf(r, t);
        var text = piece == null ? "\u27e8" + id + "\u27e9" : piece;
        tokens.appendChild(tokenSpan(r, ri, t, text, text === "" ? "ti-tok ti-empty" : "ti-tok"));
      });
      box.appendChild(tokens);
    } else if (r.ids.length && r.text == null) {
      var ids = el("div", "ti-tokens");
      r.ids.forEach(function (id, t) { ids.appendChild(tokenSpan(r, ri, t, "\u27e8" + id + "\u27e9", "ti-tok")); });
      box.appendChild(ids);
    } else {
      box.appendChild(r.text == null || r.text === "" ? el("div", "ti-none", r.text == null ? "(no text)" : "(empty)")
        : el("div", "ti-text", r.text));
      if (r.ids.length) {
        // No tokenizer: the text as it is, and one coloured cell per token beside it.
        var strip = el("div", "ti-strip");
        r.ids.forEach(function (id, t) { strip.appendChild(tokenSpan(r, ri, t, "", "ti-tok")); });
        box.appendChild(strip);
      }
    }
    return box;
  }
  function groupView(v) {
    var g = G[v.g];
    var card = testid(el("div", g.zero ? "ti-group ti-zero" : "ti-group"), "group");
    card.setAttribute("data-uid", g.uid);
    var gh = el("div", "ti-ghead");
    var uid = el("span", "ti-uid", "group " + g.uid);
    uid.title = "uid " + g.uid + ": step.round.prompt (the responses to one prompt; GRPO compares them)";
    gh.appendChild(uid);
    if (g.zero) {
      var zb = testid(el("span", "ti-badge", "zero spread"), "zero-spread");
      zb.title = "every response got the same reward: no signal for GRPO";
      gh.appendChild(zb);
    }
    var shown = v.rs.length === g.members.length ? "" : " (" + v.rs.length + " shown)";
    gh.appendChild(el("span", "ti-gstats", "mean reward " + fmt(g.mean) + " \u00b7 " + g.members.length +
      " responses" + shown));
    card.appendChild(gh);
    if (g.images && g.images.length) {
      var pics = testid(el("div", "ti-images"), "group-images");
      g.images.forEach(function (url, i) {
        var img = testid(document.createElement("img"), "group-image");
        img.src = url;
        img.alt = "image " + (i + 1) + " of the prompt";
        img.title = img.alt;
        pics.appendChild(img);
      });
      card.appendChild(pics);
    }
    card.appendChild(testid(el("div", g.prompt == null ? "ti-prompt ti-none" : "ti-prompt",
      g.prompt == null ? "(no prompt text)" : g.prompt), "group-prompt"));
    var truth = [];
    if (g.truth != null) truth.push("answer " + JSON.stringify(g.truth));
    if (g.source != null) truth.push(g.source);
    if (g.step != null) truth.push("step " + g.step);
    if (truth.length) card.appendChild(el("div", "ti-truth", truth.join(" \u00b7 ")));
    v.rs.forEach(function (ri) { card.appendChild(responseView(ri)); });
    return card;
  }
  function render() {
    var groups = visible();
    var pages = Math.max(1, Math.ceil(groups.length / data.groupsPerPage));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    var start = state.page * data.groupsPerPage;
    var onPage = groups.slice(start, start + data.groupsPerPage);
    painted = [];
    var frag = document.createDocumentFragment();
    onPage.forEach(function (v) { frag.appendChild(groupView(v)); });
    if (!R.length) frag.appendChild(el("div", "ti-none", "No rollouts in this table."));
    else if (!groups.length) frag.appendChild(el("div", "ti-none", "No response matches the filters."));
    grid.textContent = "";
    grid.appendChild(frag);
    var shownResponses = groups.reduce(function (n, v) { return n + v.rs.length; }, 0);
    summary.textContent = R.length + " responses in " + G.length + " groups \u00b7 matching: " + shownResponses +
      " responses in " + groups.length + " groups";
    pageInfo.textContent = "page " + (state.page + 1) + "/" + pages;
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    paint();
  }
  function paint() {
    var m = state.colorBy;
    painted.forEach(function (p) { p[0].style.backgroundColor = colour(m, tokenValue(R[p[1]], m, p[2])); });
    metricNames.forEach(function (name) {
      colourButtons[name].setAttribute("aria-pressed", String(name === m));
    });
    legend.textContent = "";
    if (!available[m]) { legend.textContent = "no per-token values to colour by"; return; }
    legendStops[m]().forEach(function (stop) {
      var sw = el("span", "ti-swatch");
      sw.style.backgroundColor = colour(m, stop[0]) || "transparent";
      sw.title = stop[1];
      legend.appendChild(sw);
    });
    var stops = legendStops[m]();
    legend.insertBefore(document.createTextNode(stops[0][1] + " "), legend.firstChild);
    legend.appendChild(document.createTextNode(" " + stops[stops.length - 1][1]));
  }
  render();
}`;
