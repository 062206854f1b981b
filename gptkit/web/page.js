// The live page of `python explain.py serve` (gptkit/serve.py): plain JavaScript, no build step.
// The server sends each analysis once (the next token's logits, every head's attention weights,
// the logit lens); temperature, top-k and top-p are applied here, so a slider redraws at once.
"use strict";

const $ = (id) => document.getElementById(id);
const page = {
  model: null,          // /api/model: the model's shape and where it was read from
  vocab: new Map(),     // id -> {label, text}: every token the server has named so far
  tokens: [],           // the text: {id, drawn: {prob, candidates, how} for a token added here, else null}
  analysis: null,       // the server's analysis of the text (serve.py Explorer.analyse)
  sorted: null,         // Float32Array: the next token's logits, best first
  weights: null,        // Uint8Array (layers, heads, T (T + 1) / 2): attention weights x 255, row i's 0..i
  heatmaps: new Map(),  // "layer:head" -> a canvas of its weights, one pixel a weight
  bars: [],             // the bars' elements, the likeliest first, then the rest
  kept: null,           // Float64Array: the probabilities drawn from now, in sorted's order
  rng: null,            // the sampler's state after the last draw, to go on drawing (serve.py sign)
  query: null,          // the position whose attention is shown (null: the last)
  request: 0,           // counts analyses asked for: an answer older than the newest is dropped
  controller: null,     // aborts a running Generate
  note: "",             // the last thing the status line said besides the timings
  timings: {redraw_ms: [], analyse_ms: [], model_ms: []},
};
window.gptPage = page;  // for the browser test, and for a look from the console

// ----------------------------------------------------------------------------- talking to the server

async function api(path, body) {
  const options = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message}); is explain.py serve still running?`);
  }
  const data = await response.json().catch(() => ({error: `the server answered ${response.status} without JSON`}));
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

function bytes(base64) {
  const text = atob(base64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

// a probability in a few characters: 0.1234, and a small one in full, 2.1e-5
const fmt = (p) => (p >= 1e-4 || p === 0 ? p.toFixed(4) : p.toExponential(1));

function learn(vocab) {
  for (const [id, token] of Object.entries(vocab || {})) page.vocab.set(Number(id), token);
}

const info = (id) => page.vocab.get(id) || {label: `#${id}`, text: null};
const ids = () => page.tokens.map((token) => token.id);

function settings() {
  const k = Number($("top-k").value), p = Number($("top-p").value);
  return {temperature: Number($("temperature").value), top_k: k > 0 ? k : null, top_p: p < 1 ? p : null,
          layer: Number($("layer").value)};  // the layer whose attention to send, where all would be too many
}

function say(text, error = false) {
  page.note = error ? "" : text;
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function afterPaint(work) {
  requestAnimationFrame(() => setTimeout(work, 0));
}

function timingsText() {
  const last = (name) => page.timings[name][page.timings[name].length - 1];
  const parts = [];
  if (last("analyse_ms") !== undefined) {
    parts.push(`analysed in ${last("analyse_ms").toFixed(0)} ms (the model ${last("model_ms").toFixed(0)} ms)`);
  }
  if (last("redraw_ms") !== undefined) parts.push(`bars redrawn in ${last("redraw_ms").toFixed(1)} ms`);
  return parts.join(" · ");
}

function showTimings() {
  $("status").classList.remove("error");
  $("status").textContent = [page.note, timingsText()].filter(Boolean).join(" · ");
}

// ----------------------------------------------------------------------------- the analysis

async function analyse(body, note = "") {
  const mine = ++page.request;
  const started = performance.now();
  let analysis;
  try {
    analysis = await api("/api/analyse", {...body, ...settings()});
  } catch (e) {
    if (mine === page.request) say(e.message, true);
    return false;
  }
  if (mine !== page.request) return false;
  show(analysis);
  say(note);  // at once: an error shown before is over
  afterPaint(() => {
    page.timings.analyse_ms.push(performance.now() - started);
    page.timings.model_ms.push(analysis.model_ms);
    page.note = note;
    showTimings();
  });
  return true;
}

function show(analysis) {
  learn(analysis.vocab);
  page.analysis = analysis;
  page.sorted = new Float32Array(bytes(analysis.next.logits).buffer);
  page.weights = bytes(analysis.attention.weights);
  page.heatmaps.clear();
  page.tokens = analysis.ids.map((id, i) =>
    page.tokens[i] && page.tokens[i].id === id ? page.tokens[i] : {id, drawn: null});
  page.query = null;
  renderText();
  buildBars();
  redrawBars();
  renderAttention();
  renderLens();
}

function clearPanels() {
  page.analysis = page.sorted = page.weights = null;
  page.tokens = [];
  for (const id of ["text", "bars", "reads", "heads", "lens"]) $(id).replaceChildren();
  $("query").textContent = "";
}

// ----------------------------------------------------------------------------- the text so far

function probColour(p) {
  return `hsl(${Math.round(120 * Math.max(0, Math.min(1, p)))}, 75%, 78%)`;
}

function tokenSpan(position) {
  const token = page.tokens[position];
  const {label, text} = info(token.id);
  const span = document.createElement("span");
  span.className = "token";
  span.dataset.position = position;
  if (text === null) {  // part of a character (BPE): its id, as the terminal table shows it
    span.textContent = label;
    span.classList.add("piece");
  } else if (/^\s+$/.test(text) && text.includes("\n")) {
    span.textContent = text.replace(/\n/g, "↵\n");
    span.classList.add("control");
  } else {
    span.textContent = text;
  }
  return span;
}

// The text as it reads: a token to a span, except that tokens which are parts of one character (a
// byte-level BPE spells a character it seldom saw in bytes) share a span that shows the character
// once it is whole. Parts still waiting for the rest of their character show as "…"; parts that
// can never make a character (ids typed in) show their ids.
const UTF8 = new TextDecoder("utf-8", {fatal: true});

function pieceBytes(positions) {
  const hex = positions.map((k) => info(page.tokens[k].id).bytes).join("");
  return Uint8Array.from(hex.match(/../g) || [], (pair) => parseInt(pair, 16));
}

function utf8State(positions) {  // "whole", "unfinished" (so far so good) or "invalid"
  const data = pieceBytes(positions);
  try {
    UTF8.decode(data);
    return "whole";
  } catch {
    try {
      new TextDecoder("utf-8", {fatal: true}).decode(data, {stream: true});
      return "unfinished";
    } catch {
      return "invalid";
    }
  }
}

function textGroups() {
  const groups = [];
  let run = [];  // positions of parts not yet a character
  const settle = () => {
    while (run.length && utf8State(run) === "invalid") groups.push({positions: [run.shift()], text: null});
    if (run.length && utf8State(run) === "whole") {
      groups.push({positions: run, text: UTF8.decode(pieceBytes(run))});
      run = [];
    }
  };
  page.tokens.forEach((token, k) => {
    const {text, bytes} = info(token.id);
    if (text === null && bytes !== undefined) {
      run.push(k);
      settle();
      return;
    }
    groups.push(...run.map((p) => ({positions: [p], text: null})));  // cut short by a whole token
    run = [];
    groups.push({positions: [k], text});
  });
  if (run.length) groups.push({positions: run, text: null, unfinished: true});
  return groups;
}

function textSpan(group) {
  const {positions, text, unfinished} = group;
  const last = positions[positions.length - 1];
  const span = tokenSpan(last);
  if (positions.length > 1) {
    span.textContent = text;
    span.classList.remove("piece");
    span.dataset.first = positions[0];
  }
  if (unfinished) {
    span.textContent = "…";
    span.classList.add("unfinished");
  }
  const drawn = positions.map((k) => page.tokens[k].drawn);
  span.classList.add(drawn[0] ? "drawn" : "prompt");
  if (drawn.every(Boolean)) span.style.background = probColour(drawn.reduce((p, d) => p * d.prob, 1));
  return span;
}

function renderText() {
  const box = $("text");
  box.replaceChildren(...textGroups().map(textSpan));
  box.scrollTop = box.scrollHeight;
}

function appendText() {  // after a token was added: its span, or the text again where it ends a character
  const box = $("text");
  const last = page.tokens[page.tokens.length - 1];
  if (info(last.id).text === null || box.querySelector(".unfinished")) return renderText();
  box.append(textSpan({positions: [page.tokens.length - 1], text: info(last.id).text}));
  box.scrollTop = box.scrollHeight;
}

function candidatesText(position) {
  const token = page.tokens[position];
  const row = (id, p) => `${id === token.id ? "*" : " "} ${info(id).label.padEnd(10)} ${fmt(p)}`;
  const lines = [`token ${position}: ${info(token.id).label} (id ${token.id})`];
  if (token.drawn) {
    lines.push(`${token.drawn.how}, with probability ${fmt(token.drawn.prob)}, from:`);
    lines.push(...token.drawn.candidates.map(([id, p]) => row(id, p)));
  } else if (position === 0) {
    lines.push("the first token: nothing before it to predict it from");
  } else if (page.analysis && page.analysis.candidates[position]) {
    lines.push(`the model gave it ${fmt(page.analysis.given[position])} (temperature 1); its likeliest:`);
    lines.push(...page.analysis.candidates[position].map(([id, p]) => row(id, p)));
  }
  return lines.join("\n");
}

function partsText(first, last) {  // a character made of several tokens: which, before the first's candidates
  if (first === last) return "";
  const parts = [];
  for (let k = first; k <= last; k++) parts.push(`${info(page.tokens[k].id).label} (token ${k})`);
  return `${JSON.stringify(UTF8.decode(pieceBytes(parts.map((_, i) => first + i))))} is ${parts.length} tokens: ${parts.join(" ")}\n`;
}

function showTooltip(event, text) {
  const tip = $("tooltip");
  tip.textContent = text;
  tip.hidden = false;
  const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = event.clientY + 18 + tip.offsetHeight > window.innerHeight ? event.clientY - tip.offsetHeight - 10 : event.clientY + 18;
  tip.style.left = `${Math.max(4, x)}px`;
  tip.style.top = `${Math.max(4, y)}px`;
}

function hoverToken(event) {
  const span = event.target.closest(".token");
  if (!span || !page.analysis) return;
  const position = Number(span.dataset.position);
  const first = span.dataset.first === undefined ? position : Number(span.dataset.first);
  showTooltip(event, partsText(first, position) + candidatesText(first));
  if (page.query !== position) {
    page.query = position;
    renderAttention();
  }
}

function leaveTokens() {
  $("tooltip").hidden = true;
  if (page.query !== null) {
    page.query = null;
    renderAttention();
  }
}

// ----------------------------------------------------------------------------- the next token

// The distribution sample.py draws from, as gptkit/sampling.py filtered_probs computes it, over
// logits sorted best first: raw after temperature alone, kept after top-k and top-p too.
function distribution(sorted, temperature, topK, topP) {
  const n = sorted.length;
  const raw = new Float64Array(n), kept = new Float64Array(n);
  if (temperature < 1e-4) {  // greedy: all the mass on the likeliest (GREEDY_BELOW in gptkit/sampling.py)
    raw[0] = kept[0] = 1;
    return {raw, kept};
  }
  const best = sorted[0];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += (raw[i] = Math.exp((sorted[i] - best) / temperature));
  for (let i = 0; i < n; i++) raw[i] /= sum;
  // top-k keeps the k largest, and any tied with the k-th
  const kth = topK !== null && topK < n ? sorted[topK - 1] : -Infinity;
  let keptSum = 0;
  for (let i = 0; i < n && sorted[i] >= kth; i++) keptSum += (kept[i] = raw[i]);
  for (let i = 0; i < n; i++) kept[i] /= keptSum;
  if (topP !== null && topP < 1) {  // the fewest likeliest whose sum reaches p, and any tied with the last
    let running = 0, before = 0;
    for (; before < n - 1; before++) {
      running += kept[before];
      if (running >= topP - 1e-6) break;
    }
    const cut = kept[before];
    let pSum = 0;
    for (let i = 0; i < n; i++) pSum += (kept[i] = kept[i] >= cut ? kept[i] : 0);
    for (let i = 0; i < n; i++) kept[i] /= pSum;
  }
  return {raw, kept};
}

function makeBar(text, rank) {
  const bar = document.createElement("div");
  bar.className = rank === null ? "bar rest" : "bar";
  const name = document.createElement("div");
  name.className = "bar-label";
  name.textContent = text;
  const track = document.createElement("div");
  track.className = "bar-track";
  const fill = document.createElement("div");
  fill.className = "bar-fill";
  track.append(fill);
  const value = document.createElement("div");
  value.className = "bar-value";
  bar.append(name, track, value);
  if (rank !== null) {
    bar.dataset.rank = rank;
    bar.dataset.token = page.analysis.next.ids[rank];
    bar.title = "click to add this token to the text";
  }
  return {bar, fill, value, rank};
}

function buildBars() {
  const next = page.analysis.next;
  page.bars = next.ids.map((id, rank) => makeBar(info(id).label, rank));
  const others = page.sorted.length - next.ids.length;
  if (others > 0) page.bars.push(makeBar(`the other ${others.toLocaleString("en")}`, null));
  $("bars").replaceChildren(...page.bars.map((b) => b.bar));
}

function redrawBars() {
  const {temperature, top_k, top_p} = settings();
  const {raw, kept} = distribution(page.sorted, temperature, top_k, top_p);
  page.kept = kept;
  let keptRest = 0, rawRest = 0;
  for (let i = page.analysis.next.ids.length; i < kept.length; i++) {
    keptRest += kept[i];
    rawRest += raw[i];
  }
  for (const {bar, fill, value, rank} of page.bars) {
    const p = rank === null ? keptRest : kept[rank];
    const before = rank === null ? rawRest : raw[rank];
    const cut = p === 0 && before > 0;  // exactly 0 only where a filter cut it
    bar.classList.toggle("cut", cut);
    fill.style.width = `${(100 * (cut ? before : p)).toFixed(2)}%`;
    value.textContent = cut ? "cut" : fmt(p);
  }
}

function onSlider() {
  const started = performance.now();
  const {temperature, top_k, top_p} = settings();
  $("temperature-value").textContent = temperature < 1e-4 ? `${temperature} (greedy)` : temperature.toFixed(2);
  $("top-k-value").textContent = top_k === null ? "off" : String(top_k);
  $("top-p-value").textContent = top_p === null ? "off" : top_p.toFixed(2);
  if (!page.sorted) return;
  redrawBars();
  afterPaint(() => {
    page.timings.redraw_ms.push(performance.now() - started);
    showTimings();
  });
}

async function chooseBar(event) {
  const bar = event.target.closest(".bar");
  if (!bar || bar.dataset.rank === undefined || !page.analysis || page.controller) return;
  const rank = Number(bar.dataset.rank);
  const next = page.analysis.next;
  const candidates = next.ids.slice(0, 10).map((id, r) => [id, page.kept[r]]);
  page.tokens.push({id: next.ids[rank], drawn: {prob: page.kept[rank], candidates, how: "chosen by a click"}});
  if (!await analyse({ids: ids()})) {
    page.tokens.pop();
    renderText();
  }
}

// ----------------------------------------------------------------------------- drawing tokens

function drawBody() {
  return {ids: ids(), ...settings(), seed: Number($("seed").value), rng: page.rng};
}

function addDrawn(drawn, how) {
  learn(drawn.vocab);
  page.rng = drawn.rng;
  page.tokens.push({id: drawn.id, drawn: {prob: drawn.prob, candidates: drawn.candidates, how}});
}

function busy(on) {
  $("sample").disabled = $("generate").disabled = on;
  $("stop").disabled = !on;
}

async function sampleOne() {
  if (!page.analysis) return say("type a prompt first", true);
  const started = performance.now();
  busy(true);
  try {
    const result = await api("/api/sample", drawBody());
    addDrawn(result.drawn, `drawn (seed ${$("seed").value})`);
    page.request++;  // an analysis still on its way is of the text before this token
    show(result.analysis);
    afterPaint(() => {
      page.timings.analyse_ms.push(performance.now() - started);
      page.timings.model_ms.push(result.analysis.model_ms);
      page.note = `drew ${info(result.drawn.id).label} with probability ${fmt(result.drawn.prob)}`;
      showTimings();
    });
  } catch (e) {
    say(e.message, true);
  } finally {
    busy(false);
  }
}

async function generate() {
  if (!page.analysis) return say("type a prompt first", true);
  page.controller = new AbortController();
  busy(true);
  page.request++;
  let stopped = null, count = 0, failure = null;
  try {
    const body = {...drawBody(), n: Number($("count").value)};
    const response = await fetch("/api/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                                    body: JSON.stringify(body), signal: page.controller.signal});
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error || `the server answered ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines.filter(Boolean)) {
        const message = JSON.parse(line);
        if (message.error) throw new Error(message.error);
        if (message.drawn) {
          addDrawn(message.drawn, `drawn (seed ${$("seed").value})`);
          appendText();
          say(`generating: ${++count} of ${body.n}`);
        }
        if ("done" in message) stopped = message.stopped;
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") failure = e.message;
  } finally {
    page.controller = null;
    busy(false);
  }
  const note = `generated ${count} token${count === 1 ? "" : "s"}${stopped ? `; stopped: ${stopped}` : ""}`;
  if (count && page.tokens.length) await analyse({ids: ids()}, note);  // the text as it now ends
  else if (!failure) say(note);
  if (failure) say(count ? `${failure} (after ${count} tokens, shown)` : failure, true);
}

function stop() {
  if (page.controller) page.controller.abort();
}

// ----------------------------------------------------------------------------- attention

function fillPickers() {
  const layers = page.model.n_layer, heads = page.model.n_head;
  $("layer").replaceChildren(...Array.from({length: layers}, (_, l) => new Option(`${l + 1}`, l)));
  $("head").replaceChildren(new Option("all heads", -1),
                            ...Array.from({length: heads}, (_, h) => new Option(`${h + 1}`, h)));
}

const analysed = () => page.analysis.ids.length;  // the text may have grown since (Generate)
const slot = (layer) => page.analysis.attention.layers.indexOf(layer);  // -1: this layer was not sent

function changeLayer() {
  if (page.analysis && slot(Number($("layer").value)) < 0) {
    $("query").textContent = "asking for this layer's attention…";
    analyse({ids: page.analysis.ids});
  } else {
    renderAttention();
  }
}

function weightRow(layer, head, query) {
  const T = analysed(), heads = page.analysis.attention.heads;
  const start = (slot(layer) * heads + head) * T * (T + 1) / 2 + query * (query + 1) / 2;
  return Array.from(page.weights.subarray(start, start + query + 1), (w) => w / 255);
}

function topReads(row, count) {
  return row.map((w, k) => [k, w]).sort((a, b) => b[1] - a[1]).slice(0, count);
}

function renderAttention() {
  if (!page.analysis || slot(Number($("layer").value)) < 0) return;
  const T = analysed(), heads = page.analysis.attention.heads;
  const layer = Number($("layer").value), head = Number($("head").value);
  const query = page.query === null || page.query >= T ? T - 1 : page.query;
  const shown = head === -1 ? Array.from({length: heads}, (_, h) => h) : [head];
  const rows = shown.map((h) => weightRow(layer, h, query));
  const mean = rows[0].map((_, k) => rows.reduce((sum, row) => sum + row[k], 0) / rows.length);
  const what = head === -1 ? `the mean of layer ${layer + 1}'s ${heads} heads` : `layer ${layer + 1}, head ${head + 1}`;
  $("query").textContent = `what token ${query} (${info(page.tokens[query].id).label}) reads, ${what}; hover a token to choose another`;
  const spans = page.analysis.ids.map((_, k) => {
    const span = tokenSpan(k);
    if (k <= query) {
      span.style.background = `rgba(31, 119, 180, ${mean[k].toFixed(3)})`;
      span.title = `weight ${mean[k].toFixed(3)}`;
    } else {
      span.style.opacity = 0.3;
    }
    if (k === query) span.classList.add("hovered");
    return span;
  });
  $("reads").replaceChildren(...spans);
  const cards = shown.map((h, i) => headCard(layer, h, query, rows[i], head === -1 ? 120 : 260));
  $("heads").replaceChildren(...cards);
}

function heatmap(layer, head) {
  const key = `${layer}:${head}`;
  if (!page.heatmaps.has(key)) {
    const T = analysed();
    let next = (slot(layer) * page.analysis.attention.heads + head) * T * (T + 1) / 2;
    const pixels = document.createElement("canvas");
    pixels.width = pixels.height = T;
    const context = pixels.getContext("2d");
    const image = context.createImageData(T, T);
    image.data.fill(255);  // white, as above the diagonal
    for (let q = 0; q < T; q++) {
      for (let k = 0; k <= q; k++) {  // white to blue, as explain.py's pictures
        const w = page.weights[next++] / 255, i = 4 * (q * T + k);
        image.data[i] = 255 - 224 * w;
        image.data[i + 1] = 255 - 136 * w;
        image.data[i + 2] = 255 - 75 * w;
      }
    }
    context.putImageData(image, 0, 0);
    page.heatmaps.set(key, pixels);
  }
  return page.heatmaps.get(key);
}

function headCard(layer, head, query, row, size) {
  const T = analysed();
  const card = document.createElement("div");
  card.className = "head";
  card.dataset.head = head;
  const title = document.createElement("div");
  title.textContent = `head ${head + 1}`;
  const pixels = heatmap(layer, head);
  const canvas = document.createElement("canvas");
  const scale = Math.max(1, Math.floor(size / T));
  canvas.width = canvas.height = T * scale;
  const draw = canvas.getContext("2d");
  draw.imageSmoothingEnabled = false;
  draw.drawImage(pixels, 0, 0, T * scale, T * scale);
  draw.strokeStyle = "#c62828";
  draw.lineWidth = Math.max(1, scale / 3);
  draw.strokeRect(0, query * scale, T * scale, scale);
  canvas.title = `layer ${layer + 1}, head ${head + 1}: row i is where token i looks`;
  const reads = document.createElement("div");
  reads.className = "top-reads";
  reads.textContent = topReads(row, 3).map(([k, w]) =>
    `${String(k).padStart(3)} ${info(page.tokens[k].id).label.padEnd(8)} ${w.toFixed(2)}`).join("\n");
  card.append(title, canvas, reads);
  return card;
}

// ----------------------------------------------------------------------------- the logit lens

const escape = (text) => text.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);

function renderLens() {
  // written as one piece of HTML (every label escaped): a table of thousands of cells builds fastest so
  const lens = page.analysis.lens, text = page.analysis.ids, T = text.length;
  const header = (name, labels) =>
    `<tr><th class="depth">${name}</th>${labels.map((label) => `<th>${escape(label)}</th>`).join("")}</tr>`;
  const rows = [header("next in the text", text.map((_, t) => (t + 1 < T ? info(text[t + 1]).label : "")))];
  for (let d = lens.depths.length - 1; d >= 0; d--) {  // the model's own prediction on top
    const cells = [];
    for (let t = 0; t < T; t++) {
      const [guess] = lens.ids[d][t], [p] = lens.probs[d][t];
      const hit = t + 1 < T && guess === text[t + 1] ? ' class="hit"' : "";
      cells.push(`<td${hit} data-depth="${d}" data-position="${t}" data-p="${p.toFixed(3)}">` +
                 `${escape(info(guess).label)}<br><small>${p.toFixed(2).replace(/^0/, "")}</small></td>`);
    }
    rows.push(`<tr><th class="depth">${escape(lens.depths[d])}</th>${cells.join("")}</tr>`);
  }
  rows.push(header("input", text.map((id) => info(id).label)));
  $("lens").innerHTML = `<table>${rows.join("")}</table>`;
  for (const cell of $("lens").querySelectorAll("td[data-p]")) {  // coloured here: the page allows no inline style
    const p = Number(cell.dataset.p);
    cell.style.background = `rgba(31, 119, 180, ${p})`;
    if (p > 0.6) cell.style.color = "white";
  }
  $("lens").scrollLeft = $("lens").scrollWidth;
}

function hoverLens(event) {
  const cell = event.target.closest("td");
  if (!cell || !page.analysis) {
    $("tooltip").hidden = true;
    return;
  }
  const lens = page.analysis.lens, d = Number(cell.dataset.depth), t = Number(cell.dataset.position);
  showTooltip(event, `${lens.depths[d]}, position ${t}: the likeliest next tokens\n` +
    lens.ids[d][t].map((id, i) => `${info(id).label.padEnd(10)} ${lens.probs[d][t][i].toFixed(3)}`).join("\n"));
}

// ----------------------------------------------------------------------------- the embedding map

async function loadMap() {
  let map;
  try {
    map = await api("/api/embeddings");
  } catch (e) {
    $("neighbours").textContent = e.message;
    return;
  }
  learn(map.vocab);
  const svg = $("map"), width = 600, height = 380, ns = "http://www.w3.org/2000/svg";
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const xs = map.points.map((p) => p[0]), ys = map.points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const place = (v, lo, hi, from, to) => from + (to - from) * (hi > lo ? (v - lo) / (hi - lo) : 0.5);
  const labels = map.ids.map((id, i) => {
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", place(xs[i], x0, x1, 10, width - 40).toFixed(1));
    text.setAttribute("y", place(ys[i], y0, y1, height - 10, 16).toFixed(1));
    text.textContent = info(id).label;
    text.dataset.token = id;
    return text;
  });
  svg.replaceChildren(...labels);
  const axes = map.variance.map((v) => `${(100 * v).toFixed(1)}%`).join(" and ");
  $("neighbours").textContent = `${map.ids.length} tokens on their two principal axes (${axes} of the variance); ` +
    "click one for its nearest neighbours";
}

async function neighbours(event) {
  const text = event.target.closest("text");
  if (!text) return;
  let found;
  try {
    found = await api(`/api/neighbours?token=${text.dataset.token}`);
  } catch (e) {
    $("neighbours").textContent = e.message;
    return;
  }
  learn(found.vocab);
  const near = new Set(found.neighbours.map(([id]) => id));
  for (const label of $("map").children) {
    const id = Number(label.dataset.token);
    label.classList.toggle("chosen", id === found.id);
    label.classList.toggle("near", near.has(id));
  }
  $("neighbours").textContent = `nearest ${info(found.id).label} (cosine similarity): ` +
    found.neighbours.map(([id, s]) => `${info(id).label} ${s.toFixed(3)}`).join(", ");
}

// ----------------------------------------------------------------------------- start

function promptChanged() {
  stop();
  page.tokens = [];
  page.rng = null;
  analyse({text: $("prompt").value}).then((ok) => {
    if (!ok && !page.controller && $("status").classList.contains("error")) clearPanels();
  });
}

async function start() {
  try {
    page.model = await api("/api/model");
  } catch (e) {
    say(e.message, true);
    return;
  }
  const m = page.model;
  $("model").textContent = `${m.source}: ${m.n_layer} layers, ${m.n_head} heads, ${m.n_embd} wide, context ` +
    `${m.block_size}, ${m.vocab_size.toLocaleString("en")} tokens (${m.codec}), ` +
    `${m.parameters.toLocaleString("en")} parameters`;
  $("top-k").max = Math.min(100, m.vocab_size);
  fillPickers();
  let typing = null;
  $("prompt").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(promptChanged, 100);
  });
  for (const id of ["temperature", "top-k", "top-p"]) $(id).addEventListener("input", onSlider);
  $("seed").addEventListener("input", () => { page.rng = null; });
  $("bars").addEventListener("click", chooseBar);
  $("sample").addEventListener("click", sampleOne);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stop);
  for (const id of ["text", "reads"]) {
    $(id).addEventListener("mouseover", hoverToken);
    $(id).addEventListener("mousemove", (event) => {
      if (!$("tooltip").hidden) showTooltip(event, $("tooltip").textContent);
    });
    $(id).addEventListener("mouseleave", leaveTokens);
  }
  $("layer").addEventListener("change", changeLayer);
  $("head").addEventListener("change", renderAttention);
  $("map").addEventListener("click", neighbours);
  $("lens").addEventListener("mouseover", hoverLens);
  $("lens").addEventListener("mousemove", hoverLens);
  $("lens").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  onSlider();
  say("type a prompt");
  loadMap();
  if ($("prompt").value) promptChanged();
}

start();
