// The Tandem console: plain DOM over the contract's Connect JSON routes (POST /tandem.v1.<Service>/<Method>),
// the same calls any client makes, with the token typed at sign-in (kept in this tab's sessionStorage only).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = "tandem.token";
const state = { info: null, collections: [], metrics: null, history: [], timer: null, seq: 0 };

// ---- calls --------------------------------------------------------------------------------------------------

class CallError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Every call carries the token typed at sign-in, if any.
function headers(extra) {
  const token = sessionStorage.getItem(TOKEN);
  return token ? { ...extra, authorization: "Bearer " + token } : { ...extra };
}

async function rpc(method, body) {
  const r = await fetch("/tandem.v1." + method, { method: "POST", headers: headers({ "content-type": "application/json" }),
    body: JSON.stringify(body || {}) });
  const text = await r.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (e) { data = {}; }
  if (!r.ok) {
    const err = new CallError(r.status, data.code || String(r.status), data.message || text || r.statusText);
    if (r.status === 401) signin(err.message);
    throw err;
  }
  return data;
}

// proto3 JSON leaves out zeros and empty lists, and writes 64-bit integers as strings.
const num = (v) => (v === undefined || v === null ? 0 : Number(v));
const list = (v) => v || [];

// ---- small DOM helpers (text only: nothing from the server is ever parsed as HTML) ------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid !== undefined && kid !== null && kid !== false) e.append(kid instanceof Node ? kid : String(kid));
  }
  return e;
}

function fill(target, ...kids) {
  target.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined));
}

function table(target, head, rows) {
  fill(target, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
}

function say(id, message) {
  $(id).textContent = message || "";
}

const fmt = (x, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : "–");
const ms = (seconds) => (num(seconds) * 1000).toFixed(1) + " ms";

// ---- access: what the caller may do (the server checks every call; this only hides what it would refuse) ----

function globRe(glob) {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) { re += "\\["; continue; }
      let set = glob.slice(i + 1, end);
      if (set[0] === "!") set = "^" + set.slice(1);
      re += "[" + set.replace(/\\/g, "\\\\") + "]";
      i = end;
    } else re += c.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return new RegExp("^(?:" + re + ")$");
}

function may(scope, collection) {
  const globs = list(state.info && state.info.caller && state.info.caller[scope]);
  return globs.some((g) => globRe(g).test(collection));
}

const holds = (scope) => list(state.info && state.info.caller && state.info.caller[scope]).length > 0;

// ---- start, sign-in, pages ----------------------------------------------------------------------------------

function signin(message) {
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "signin";
  $("signout").hidden = true;
  say("who", "");
  say("signin-error", sessionStorage.getItem(TOKEN) ? message : "");
  $("token").focus();
}

async function boot() {
  try {
    state.info = await rpc("InfoService/Info");
  } catch (e) {
    if (e.status !== 401) showBanner(`The server did not answer Info: ${e.message}`);
    return;
  }
  const caller = state.info.caller || {};
  say("who", caller.principal ? `signed in as ${caller.principal}` : "no access checks on this server");
  $("signout").hidden = !sessionStorage.getItem(TOKEN);
  const rerankers = list(state.info.models).filter((m) => m.kind === "reranker").map((m) => m.name);
  const embedders = list(state.info.models).filter((m) => m.kind === "embedder").map((m) => m.name);
  fill($("s-reranker"), el("option", { value: "" }, `default (${state.info.defaultReranker || "none"})`),
    rerankers.map((n) => el("option", { value: n }, n)), el("option", { value: "none" }, "none: recall only"));
  fill($("r-model"), rerankers.map((n) => el("option", { value: n }, n)));
  fill($("c-embedder"), embedders.map((n) => el("option", { value: n }, n)));
  await loadCollections();
  route();
}

function showBanner(message) {
  $("banner").hidden = !message;
  say("banner", message);
}

const pages = { search: enterSearch, rerank: () => {}, collections: enterCollections, server: enterServer };

function route() {
  if (!state.info) return;
  const [name, query] = location.hash.slice(1).split("?");
  const page = pages[name] ? name : "search";
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "page-" + page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.page === page);
  if (page !== "server") stopLive();
  pages[page](new URLSearchParams(query || ""));
}

async function loadCollections() {
  try {
    state.collections = list((await rpc("IndexService/ListCollections")).collections).sort();
  } catch (e) {
    state.collections = [];
    say("c-error", e.message);
  }
  const keep = $("s-collection").value;
  fill($("s-collection"), state.collections.map((n) => el("option", { value: n }, n)));
  if (state.collections.includes(keep)) $("s-collection").value = keep;
}

// ---- search playground --------------------------------------------------------------------------------------

const FIELDS = { collection: "s-collection", q: "s-query", mode: "s-mode", top_n: "s-top", recall_k: "s-recall",
  depth: "s-depth", reranker: "s-reranker", cascade: "s-cascade", filter: "s-filter" };

async function describe(collection) {
  if (!collection) return say("s-about", "");
  try {
    const i = (await rpc("IndexService/DescribeCollection", { collection })).info || {};
    const chunk = i.chunking ? `, passages of ${i.chunking.maxTokens} tokens (${num(i.passages)} passages)` : "";
    say("s-about", `${num(i.documents)} documents, ${num(i.rowCount)} rows, embedder ${i.embedder}${chunk}`);
  } catch (e) {
    say("s-about", e.message);
  }
}

function enterSearch(params) {
  const c = params.get("collection");
  if (c && !state.collections.includes(c)) $("s-collection").append(el("option", { value: c }, c)); // a shared URL
  for (const [key, id] of Object.entries(FIELDS)) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  describe($("s-collection").value);
  if (params.get("q")) runSearch();
}

function searchRequests() {
  const v = (id) => $(id).value.trim();
  const base = { collection: v("s-collection"), query: v("s-query"), mode: "SEARCH_MODE_" + v("s-mode").toUpperCase(),
    topN: Number(v("s-top")) || 0, recallK: Number(v("s-recall")) || 0, filterText: $("s-filter").value };
  const reranked = { ...base };
  if (Number(v("s-depth"))) reranked.rerankDepth = Number(v("s-depth"));
  if (v("s-cascade")) {
    reranked.rerankStages = v("s-cascade").split(",").filter((s) => s.trim()).map((s) => {
      const [model, keep] = s.split(":").map((x) => x.trim());
      return { model, keep: Number(keep) || 0 };
    });
  } else if (v("s-reranker") && v("s-reranker") !== "none") reranked.reranker = v("s-reranker");
  const rerank = v("s-reranker") !== "none";
  return { recall: { ...base, rerank: false }, reranked: rerank ? reranked : null };
}

async function runSearch() {
  const seq = ++state.seq;
  const { recall, reranked } = searchRequests();
  for (const id of ["s-error", "s-filter-error"]) say(id, "");
  $("s-degraded").hidden = true;
  const started = state.submitted || performance.now();
  state.submitted = 0;
  const calling = performance.now();
  let a, b;
  try {
    [a, b] = await Promise.all([rpc("SearchService/Search", recall),
      reranked ? rpc("SearchService/Search", reranked) : Promise.resolve(null)]);
  } catch (e) {
    if (seq !== state.seq) return;
    say(/filter/i.test(e.message) ? "s-filter-error" : "s-error", e.message);
    fill($("s-recall-hits"));
    fill($("s-rerank-hits"));
    fill($("s-timings"));
    return;
  }
  if (seq !== state.seq) return; // a newer search has started
  const callMs = performance.now() - calling;
  const finalHits = list((b || a).hits);
  const position = new Map(finalHits.map((h, i) => [h.id, i]));
  fill($("s-recall-hits"), list(a.hits).map((h, i) => hitItem(h, {
    rank: i + 1, score: num(h.recallScore), label: "recall",
    move: b ? (position.has(h.id) ? `→ #${position.get(h.id) + 1}` : "→ out") : "" })));
  fill($("s-rerank-hits"), b ? finalHits.map((h, i) => hitItem(h, {
    rank: i + 1, score: num(h.score), label: "rerank", extra: `recall #${num(h.recallRank) + 1} (${fmt(num(h.recallScore))})`,
    move: arrow(num(h.recallRank), i) })) : []);
  say("s-recall-note", `${num(a.recalled)} recalled`);
  say("s-rerank-note", b ? (b.reranked ? "" : "(not reranked)") : "(reranker off)");
  if (b && b.degradedReason) {
    $("s-degraded").hidden = false;
    say("s-degraded", `Degraded: ${b.degradedReason}`);
  }
  timings((b || a).timings || {});
  const box = $("s-timings");
  box.dataset.callMs = callMs.toFixed(1); // both Search calls, as this browser waited for them
  box.dataset.clientMs = (performance.now() - started).toFixed(1); // from the submit to the results on screen
  box.dataset.serverMs = (num(((b || a).timings || {}).totalSeconds) * 1000).toFixed(1);
}

function arrow(recallRank, rank) {
  const d = recallRank - rank;
  return d > 0 ? `▲${d}` : d < 0 ? `▼${-d}` : "=";
}

function hitItem(h, o) {
  const text = h.text || "";
  let body;
  if (h.passage) { // a chunked collection: the passage that matched, marked in its place
    const off = num(h.passageOffset);
    const before = text.slice(Math.max(0, off - 160), off);
    const after = text.slice(off + h.passage.length, off + h.passage.length + 160);
    body = el("p", { class: "text" }, off > 160 ? "…" : "", before, el("mark", {}, h.passage), after,
      text.length > off + h.passage.length + 160 ? "…" : "");
  } else {
    body = el("p", { class: "text" }, text.length > 320 ? text.slice(0, 320) + "…" : text);
  }
  const meta = h.metadata && Object.keys(h.metadata).length ? el("p", { class: "muted" }, JSON.stringify(h.metadata)) : null;
  return el("li", { "data-id": h.id },
    el("div", { class: "hit-head" }, el("span", { class: "rank" }, `#${o.rank}`), el("b", {}, h.id),
      el("span", { class: "score", title: o.label + " score" }, fmt(o.score, 4)),
      o.extra ? el("span", { class: "muted" }, o.extra) : null,
      o.move ? el("span", { class: "move" + (o.move.startsWith("▲") ? " up" : o.move.startsWith("▼") ? " down" : "") }, o.move) : null),
    body, meta);
}

function timings(t) {
  const parts = [["embed", num(t.embedSeconds)], ["recall", num(t.recallSeconds)]];
  for (const s of list(t.rerankStages)) {
    parts.push([`rerank ${s.model} (${s.skipped ? "skipped" : num(s.scored) + " scored"})`, num(s.seconds)]);
  }
  const total = Math.max(num(t.totalSeconds), parts.reduce((a, p) => a + p[1], 0), 1e-9);
  const bar = el("div", { class: "bar" }, parts.map(([name, s], i) => {
    const seg = el("span", { class: "seg seg" + (i % 4), title: `${name}: ${ms(s)}` });
    seg.style.width = (100 * s / total).toFixed(2) + "%";
    return seg;
  }));
  fill($("s-timings"), bar, el("p", { class: "muted" }, parts.map(([n, s]) => `${n} ${ms(s)}`).join(" · ") +
    ` · total ${ms(t.totalSeconds)}`));
}

function submitSearch(ev) {
  ev.preventDefault();
  const p = new URLSearchParams();
  for (const [key, id] of Object.entries(FIELDS)) {
    if ($(id).value.trim()) p.set(key, $(id).value);
  }
  const hash = "#search?" + p.toString();
  state.submitted = performance.now();
  if (location.hash === hash) runSearch(); // the same URL: no hashchange, search again
  else location.hash = hash;
}

// ---- rerank sandbox -----------------------------------------------------------------------------------------

async function submitRerank(ev) {
  ev.preventDefault();
  say("r-error", "");
  const documents = $("r-docs").value.split("\n").filter((d) => d.trim());
  let out;
  try {
    out = await rpc("RerankService/Rerank", { query: $("r-query").value, documents, model: $("r-model").value,
      longDocuments: $("r-long").value, returnDocuments: true });
  } catch (e) {
    say("r-error", e.message);
    fill($("r-results"));
    return;
  }
  const u = out.usage || {};
  say("r-usage", `${out.model}: ${num(u.pairs)} pairs, ${num(u.tokens)} tokens, ${num(u.truncated)} truncated, ` +
    `${num(u.windows)} windows, ${ms(u.totalSeconds)}`);
  table($("r-results"), ["rank", "passage #", "score", "text (the window that scored is marked)"],
    list(out.results).map((r, i) => {
      const d = documents[num(r.index)];
      const off = num(r.windowOffset), len = r.windowLength === undefined ? d.length : num(r.windowLength);
      const text = el("span", {}, d.slice(0, off), el("mark", {}, d.slice(off, off + len)), d.slice(off + len));
      return [String(i + 1), String(num(r.index) + 1), fmt(num(r.relevanceScore), 6), text];
    }));
  $("r-results").dataset.scores = JSON.stringify(list(out.results).map((r) => [num(r.index), num(r.relevanceScore)]));
}

// ---- collections --------------------------------------------------------------------------------------------

async function enterCollections() {
  say("c-error", "");
  await loadCollections();
  const infos = await Promise.all(state.collections.map((collection) =>
    rpc("IndexService/DescribeCollection", { collection }).then((r) => r.info || {}, (e) => ({ collection, error: e.message }))));
  table($("c-table"), ["collection", "documents", "passages", "embedder", "dimension", "chunking", "language", "index", ""],
    infos.map((i) => [i.collection, i.error || String(num(i.documents)), String(num(i.passages)), i.embedder || "",
      String(num(i.dimension)), i.chunking ? `${num(i.chunking.maxTokens)}/${num(i.chunking.overlapTokens)}` : "",
      i.language || "", i.indexType || "",
      el("span", { class: "actions" },
        el("button", { type: "button", class: "export", "data-collection": i.collection,
          onclick: () => exportDocuments(i.collection) }, "Export"),
        may("admin", i.collection) ? el("button", { type: "button", class: "drop", "data-collection": i.collection,
          onclick: () => drop(i.collection) }, "Drop") : null)]));
  $("create-form").hidden = !holds("admin");
  const writable = state.collections.filter((c) => may("write", c));
  $("ingest").hidden = writable.length === 0;
  const keep = $("i-collection").value;
  fill($("i-collection"), writable.map((n) => el("option", { value: n }, n)));
  if (writable.includes(keep)) $("i-collection").value = keep;
}

// Export is a server stream: Connect's streaming protocol, one enveloped message each way (a flags byte, a
// big-endian length, the JSON), the answer ending with an end-of-stream envelope that carries any error.
function envelope(message) {
  const body = new TextEncoder().encode(JSON.stringify(message));
  const out = new Uint8Array(5 + body.length);
  new DataView(out.buffer).setUint32(1, body.length);
  out.set(body, 5);
  return out;
}

async function* messages(response) {
  const reader = response.body.getReader();
  let buf = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (value) {
      const next = new Uint8Array(buf.length + value.length);
      next.set(buf);
      next.set(value, buf.length);
      buf = next;
    }
    while (buf.length >= 5) {
      const n = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
      if (buf.length < 5 + n) break;
      yield { end: (buf[0] & 2) !== 0, message: JSON.parse(new TextDecoder().decode(buf.subarray(5, 5 + n))) };
      buf = buf.slice(5 + n);
    }
    if (done) return;
  }
}

// The documents as JSONL ({"id", "text", "metadata"} per line), which this page's ingest and `tandem ingest`
// read back; a chunked collection's passages are put back together by their offsets. Vectors and the collection
// record stay with `tandem export` (Parquet).
async function exportDocuments(collection) {
  say("c-error", "");
  say("c-status", `exporting ${collection}…`);
  const r = await fetch("/tandem.v1.IndexService/Export", { method: "POST",
    headers: headers({ "content-type": "application/connect+json" }), body: envelope({ collection }) });
  if (!r.ok) {
    const text = await r.text();
    let message = text;
    try { message = JSON.parse(text).message || text; } catch (e) { /* not JSON */ }
    say("c-status", "");
    return say("c-error", message);
  }
  const docs = new Map();
  let rows = 0;
  for await (const { end, message } of messages(r)) {
    if (end) {
      if (message.error) return say("c-error", `export of ${collection} failed: ${message.error.message}`);
      continue;
    }
    for (const row of list(message.rows)) {
      rows++;
      if (!docs.has(row.id)) docs.set(row.id, { id: row.id, metadata: JSON.parse(row.metadataJson || "{}"), parts: [] });
      docs.get(row.id).parts.push(row);
    }
  }
  const lines = [...docs.values()].map((d) => {
    let text = "";
    for (const p of d.parts.sort((a, b) => num(a.chunk) - num(b.chunk))) text = text.slice(0, num(p.start)) + (p.text || "");
    return JSON.stringify({ id: d.id, text, metadata: d.metadata });
  });
  const a = el("a", { href: URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "application/jsonl" })),
    download: `${collection}.jsonl` });
  document.body.append(a);
  a.click();
  a.remove();
  say("c-status", `exported ${docs.size} documents (${rows} rows) of ${collection}`);
}

async function drop(collection) {
  if (!confirm(`Drop ${collection} and every document in it?`)) return;
  try {
    await rpc("IndexService/DropCollection", { collection });
  } catch (e) {
    say("c-error", e.message);
  }
  enterCollections();
}

async function submitCreate(ev) {
  ev.preventDefault();
  say("c-error", "");
  const body = { collection: $("c-name").value.trim(), embedder: $("c-embedder").value, language: $("c-language").value.trim() };
  if (Number($("c-chunk").value)) body.chunking = { maxTokens: Number($("c-chunk").value), overlapTokens: Number($("c-overlap").value) || 0 };
  try {
    await rpc("IndexService/CreateCollection", body);
  } catch (e) {
    say("c-error", e.message);
    return;
  }
  enterCollections();
}

function documentsOf(name, text) {
  const lines = text.split(/\r?\n/);
  const docs = [];
  const jsonl = /\.jsonl?$/i.test(name) || lines.find((l) => l.trim()).trim().startsWith("{");
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    if (!jsonl) { docs.push({ id: `${name}:${i + 1}`, text: line }); return; }
    let d;
    try { d = JSON.parse(line); } catch (e) { throw new Error(`line ${i + 1} of ${name} is not JSON: ${e.message}`); }
    const id = d.id ?? d._id;
    if (id === undefined || typeof d.text !== "string") throw new Error(`line ${i + 1} of ${name} has no "id" and "text"`);
    const doc = { id: String(id), text: d.title ? `${d.title} ${d.text}`.trim() : d.text };
    if (d.metadata && typeof d.metadata === "object") doc.metadata = d.metadata;
    docs.push(doc);
  });
  return docs;
}

async function ingest(file) {
  const collection = $("i-collection").value;
  const bar = $("i-progress");
  let docs;
  try {
    docs = documentsOf(file.name, await file.text());
  } catch (e) {
    say("i-status", e.message);
    return;
  }
  bar.hidden = false;
  bar.max = docs.length;
  bar.value = 0;
  const per = Math.max(1, Math.min(64, num(state.info.limits && state.info.limits.maxDocumentsPerRequest) || 64));
  let acked = 0;
  for (let i = 0; i < docs.length; i += per) {
    try {
      acked += num((await rpc("IndexService/Upsert", { collection, documents: docs.slice(i, i + per) })).upserted);
    } catch (e) {
      say("i-status", `stopped: ${e.message} (${acked} of ${docs.length} documents acknowledged before)`);
      return;
    }
    bar.value = acked;
    say("i-status", `${acked} of ${docs.length} documents acknowledged`);
  }
  say("i-status", `done: ${acked} of ${docs.length} documents acknowledged into ${collection}`);
  enterCollections();
}

// ---- server page: models, limits, live figures from /metrics -----------------------------------------------

async function enterServer() {
  try {
    state.info = await rpc("InfoService/Info");
  } catch (e) {
    return;
  }
  const i = state.info;
  fill($("v-models"), list(i.models).map((m) => el("div", { class: "model" },
    el("h3", {}, `${m.name} `, el("span", { class: "muted" }, m.kind)),
    el("p", {}, `${m.backend} ${m.precision} (${m.dtype}) on ${m.device}, ${(num(m.parameterBytes) / 2 ** 20).toFixed(0)} MiB, ` +
      `max ${num(m.maxSeqLength)} tokens${m.dimension ? `, ${m.dimension} dimensions` : ""}`),
    el("p", { class: "muted" }, m.choice || ""),
    list(m.trials).length ? trialTable(m.trials) : null)));
  const limits = i.limits || {};
  const snake = (k) => k.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase()); // the contract's field names
  table($("v-limits"), ["limit", "value"], Object.keys(limits).sort().map((k) => [snake(k), String(limits[k])]));
  state.history = [];
  state.metrics = null;
  stopLive();
  await poll();
  state.timer = setInterval(poll, 2000);
}

function trialTable(trials) {
  const t = el("table", { class: "grid trials" });
  table(t, ["option", "items/s", "nDCG@10 mean", "worst", "top loss", "min cosine", "verdict"],
    trials.map((x) => [`${x.backend} ${x.precision}${x.chosen ? " ◀ chosen" : ""}`, fmt(num(x.itemsPerSecond), 1),
      fmt(Number(x.ndcgMean), 5), fmt(Number(x.ndcgWorst), 5), fmt(Number(x.topLoss), 4), fmt(Number(x.minCosine), 5),
      x.verdict || ""]));
  return t;
}

function stopLive() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: parseFloat(m[3]) });
  }
  return out;
}

function sumBy(samples, name, key) {
  const out = new Map();
  for (const s of samples) {
    if (s.name !== name) continue;
    const k = key(s.labels);
    out.set(k, (out.get(k) || 0) + s.value);
  }
  return out;
}

async function poll() {
  let text;
  try {
    const r = await fetch("/metrics", { headers: headers({}) });
    if (!r.ok) throw new Error(`${r.status} ${(await r.text()).slice(0, 200)}`);
    text = await r.text();
  } catch (e) {
    fill($("v-charts"), el("p", { class: "error" }, `metrics: ${e.message}`));
    return;
  }
  const s = parseMetrics(text);
  const now = {
    t: performance.now() / 1000,
    requests: sumBy(s, "tandem_requests_total", (l) => l.method),
    errors: sumBy(s.filter((x) => x.labels.code !== "OK"), "tandem_requests_total", (l) => l.method),
    latSum: sumBy(s, "tandem_request_duration_seconds_sum", (l) => l.method),
    latCount: sumBy(s, "tandem_request_duration_seconds_count", (l) => l.method),
    queue: [...sumBy(s, "tandem_queue_depth", () => "all").values()][0] || 0,
    batchSum: [...sumBy(s, "tandem_batch_size_sum", () => "all").values()][0] || 0,
    batchCount: [...sumBy(s, "tandem_batch_size_count", () => "all").values()][0] || 0,
  };
  const prev = state.metrics;
  state.metrics = now;
  const total = (m) => [...m.values()].reduce((a, b) => a + b, 0);
  if (prev) {
    const dt = Math.max(now.t - prev.t, 1e-3);
    const dCount = total(now.latCount) - total(prev.latCount);
    const dBatches = now.batchCount - prev.batchCount;
    state.history.push({ rate: (total(now.requests) - total(prev.requests)) / dt,
      latency: dCount > 0 ? 1000 * (total(now.latSum) - total(prev.latSum)) / dCount : 0,
      queue: now.queue, batch: dBatches > 0 ? (now.batchSum - prev.batchSum) / dBatches : 0 });
    state.history = state.history.slice(-60);
  }
  fill($("v-charts"), [["requests/s", "rate"], ["mean latency, ms", "latency"], ["queue depth", "queue"],
    ["items per batch", "batch"]].map(([title, key]) => chart(title, state.history.map((h) => h[key]))));
  const methods = [...now.requests.keys()].sort();
  table($("v-methods"), ["method", "requests", "errors", "mean latency"], methods.map((m) => [m,
    String(now.requests.get(m)), String(now.errors.get(m) || 0),
    ms(now.latCount.get(m) ? now.latSum.get(m) / now.latCount.get(m) : 0)]));
}

function chart(title, values) {
  const W = 240, H = 60, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  const top = Math.max(...values, 1e-9);
  if (values.length > 1) {
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", values.map((v, i) => `${(i * W / (values.length - 1)).toFixed(1)},${(H - 2 - (H - 4) * v / top).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  const last = values.length ? values[values.length - 1] : 0;
  return el("figure", {}, svg, el("figcaption", {}, `${title}: `, el("b", {}, fmt(last, 1)), el("span", { class: "muted" }, ` (max ${fmt(top === 1e-9 ? 0 : top, 1)})`)));
}

// ---- wiring -------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN, $("token").value.trim());
    $("token").value = "";
    boot();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN);
    location.reload(); // nothing the last principal saw stays on the page
  });
  $("search-form").addEventListener("submit", submitSearch);
  $("s-collection").addEventListener("change", () => describe($("s-collection").value));
  $("rerank-form").addEventListener("submit", submitRerank);
  $("create-form").addEventListener("submit", submitCreate);
  const zone = $("dropzone");
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    if (ev.dataTransfer.files.length) ingest(ev.dataTransfer.files[0]);
  });
  $("i-file").addEventListener("change", () => { if ($("i-file").files.length) ingest($("i-file").files[0]); });
  window.addEventListener("hashchange", route);
  boot();
});
