// negset review: one page, its cards loaded page by page as the reviewer scrolls.
// Decisions go to POST /api/decide with the page's token; the server appends them to
// reviews.csv (locked, fsync'd) before it answers, so a card shows "saved" only once on disk.
"use strict";

const TOKEN = document.querySelector('meta[name="negset-token"]').content;
const PAGE = 60;
const POLL_MS = 3000;
const LABELS = { no_target: "no target", contains_target: "contains the target", unsure: "unsure" };
const KEYS = { n: "no_target", t: "contains_target", u: "unsure" };

const state = {
  queue: null,         // the queue shown
  queues: {},          // name -> counts from the server
  cards: [],           // cards of the shown queue loaded so far
  total: 0,
  loading: false,
  current: -1,
  decisions: {},       // sha256 -> decision in force (all queues)
  undo: [],            // this tab's decisions, newest last: {sha256, queue, before}
  pending: 0,
};

const $ = (sel) => document.querySelector(sel);

function setStatus(text, cls) {
  const el = $("#status");
  el.textContent = text;
  el.className = cls || "";
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Negset-Token": TOKEN },
    body: JSON.stringify(body),
  };
  const res = await fetch(path, opts);
  let data;
  try { data = await res.json(); } catch (e) { data = { ok: false, error: `HTTP ${res.status}` }; }
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

// ------------------------------------------------------------------ header

function renderQueues() {
  const nav = $("#queues");
  nav.textContent = "";
  for (const [name, c] of Object.entries(state.queues)) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.queue = name;
    b.className = name === state.queue ? "on" : "";
    b.innerHTML = `${name}<span class="n">${c.decided}/${c.total}</span>`;
    b.addEventListener("click", () => showQueue(name));
    nav.appendChild(b);
  }
  const c = state.queues[state.queue];
  if (c) {
    $("#bar-done").style.width = c.total ? `${(100 * c.decided) / c.total}%` : "0";
    $("#progress-text").textContent =
      `${state.queue}: ${c.decided} of ${c.total} reviewed — ${c.no_target} no target, ` +
      `${c.contains_target} contain the target, ${c.unsure} unsure`;
  }
}

function renderAudit(text, complete) {
  const el = $("#audit");
  el.textContent = `Audit: ${text}`;
  el.className = complete ? "" : "incomplete";
}

async function refreshState() {
  const s = await api("/api/state");
  state.queues = s.queues;
  renderQueues();
  renderAudit(s.audit_statement, s.audit.complete);
  // decisions made in another tab (or by another server on the same reviews.csv)
  const seen = new Set(Object.keys(s.decisions));
  for (const card of state.cards) {
    const d = s.decisions[card.sha256] || null;
    if (d !== (state.decisions[card.sha256] || null)) paintDecision(card.sha256, d);
  }
  for (const sha of Object.keys(state.decisions)) if (!seen.has(sha)) delete state.decisions[sha];
  Object.assign(state.decisions, s.decisions);
  return s;
}

// ------------------------------------------------------------------ cards

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function frame(sha, w, h, boxes, alt) {
  const f = el("div", { class: "frame" });
  const img = el("img", { src: `/thumb/${sha}`, loading: "lazy", alt: alt, decoding: "async" });
  if (w && h) img.style.aspectRatio = `${w} / ${h}`;
  f.appendChild(img);
  for (const b of boxes || []) {
    const [x0, y0, x1, y1] = b.box;
    const d = el("div", { class: `box ${b.kind}` });
    d.style.left = `${100 * x0}%`; d.style.top = `${100 * y0}%`;
    d.style.width = `${100 * (x1 - x0)}%`; d.style.height = `${100 * (y1 - y0)}%`;
    d.appendChild(el("span", {}, b.score == null ? b.label : `${b.label} ${b.score.toFixed(2)}`));
    f.appendChild(d);
  }
  return f;
}

function cardElement(c, index) {
  const art = el("article", { class: "card", "data-sha": c.sha256, "data-queue": c.queue, "data-index": index });
  const pair = el("div", { class: "pair" });
  const subject = el("figure", { class: "subject" });
  const link = el("a", { href: `/image/${c.sha256}`, target: "_blank", rel: "noopener" });
  link.appendChild(frame(c.sha256, c.width, c.height, c.boxes, c.uri));
  subject.appendChild(link);
  const cap = el("figcaption");
  cap.appendChild(el("b", {}, c.uri.split("/").pop()));
  cap.appendChild(document.createTextNode(
    c.similarity == null ? ` ${c.uri}` : ` · similarity ${c.similarity.toFixed(3)} · ${c.uri}`));
  subject.appendChild(cap);
  pair.appendChild(subject);
  const near = el("figure", { class: "nearest" });
  if (c.nearest) {
    near.appendChild(frame(c.nearest.sha256, c.nearest.width, c.nearest.height, [], c.nearest.uri));
    near.appendChild(el("figcaption", {}, `nearest positive: cosine ${c.nearest.similarity.toFixed(3)} · ${c.nearest.uri.split("/").pop()}`));
  } else {
    near.appendChild(el("figcaption", {}, "no embeddings: nearest positive unknown"));
  }
  pair.appendChild(near);
  art.appendChild(pair);
  art.appendChild(el("p", { class: "reason" }, c.reason || ""));
  const row = el("div", { class: "row" });
  for (const [key, d] of Object.entries(KEYS)) {
    const b = el("button", { type: "button", "data-d": d, title: `key ${key}` }, `${key} · ${LABELS[d]}`);
    b.addEventListener("click", (ev) => {
      ev.stopPropagation();
      select(Number(art.dataset.index), false);
      decide(c.sha256, c.queue, d, false);
    });
    row.appendChild(b);
  }
  row.appendChild(el("span", { class: "state" }, ""));
  art.appendChild(row);
  art.addEventListener("click", () => select(Number(art.dataset.index), false));
  return art;
}

function paintDecision(sha, decision) {
  const art = document.querySelector(`article[data-sha="${sha}"]`);
  if (!art) return;
  for (const d of Object.keys(LABELS)) art.classList.toggle(`d-${d}`, decision === d);
  for (const b of art.querySelectorAll("button[data-d]")) b.classList.toggle("on", b.dataset.d === decision);
  art.querySelector(".state").textContent = decision ? `saved: ${LABELS[decision]}` : "";
}

async function loadMore() {
  if (state.loading || (state.cards.length >= state.total && state.total > 0)) return;
  const queue = state.queue;
  state.loading = true;
  $("#more").textContent = "loading…";
  try {
    const page = await api(`/api/cards?queue=${encodeURIComponent(queue)}&offset=${state.cards.length}&limit=${PAGE}`);
    if (queue !== state.queue) return;  // the reviewer switched queues meanwhile
    state.total = page.total;
    const main = $("#cards");
    for (const c of page.cards) {
      const index = state.cards.length;
      state.cards.push(c);
      main.appendChild(cardElement(c, index));
      if (c.decision) state.decisions[c.sha256] = c.decision;
      paintDecision(c.sha256, c.decision);
    }
    if (state.current < 0 && state.cards.length) select(0, false);
    if (!state.total) main.innerHTML = '<p class="empty">This queue is empty.</p>';
  } catch (e) {
    setStatus(`could not load cards: ${e.message}`, "error");
  } finally {
    state.loading = false;
    $("#more").textContent = state.cards.length < state.total ? `${state.cards.length} of ${state.total} loaded` :
      (state.total ? `all ${state.total} cards` : "");
  }
  // keep filling while the sentinel is still on screen
  if (queue === state.queue && state.cards.length < state.total && sentinelVisible()) loadMore();
}

function sentinelVisible() {
  const r = $("#more").getBoundingClientRect();
  return r.top < window.innerHeight + 600;
}

function select(index, scroll = true) {
  if (index < 0 || index >= state.cards.length) return;
  const old = document.querySelector("article.current");
  if (old) old.classList.remove("current");
  state.current = index;
  const art = document.querySelector(`article[data-index="${index}"]`);
  art.classList.add("current");
  if (scroll) art.scrollIntoView({ block: "nearest" });
  if (index >= state.cards.length - 4) loadMore();
}

function columns() {
  const arts = document.querySelectorAll("article.card");
  if (arts.length < 2) return 1;
  const top = arts[0].offsetTop;
  let n = 0;
  for (const a of arts) { if (a.offsetTop !== top) break; n++; }
  return Math.max(1, n);
}

// One tab's writes go out one at a time, in the order of the keys and clicks: the file's order is the
// reviewer's order, and an undo always undoes the decision before it (even one still being saved).
let writes = Promise.resolve();
function queueWrite(fn) {
  writes = writes.then(fn, fn);
  return writes;
}

function decide(sha, queue, decision, advance) {
  const art = document.querySelector(`article[data-sha="${sha}"]`);
  if (art) art.classList.add("saving");
  if (advance && art && Number(art.dataset.index) === state.current) select(state.current + 1);
  state.pending++;
  setStatus("saving…");
  return queueWrite(async () => {
    const before = state.decisions[sha] || null;
    try {
      const res = await api("/api/decide", { sha256: sha, decision: decision, queue: queue });
      state.undo.push({ sha256: sha, queue: queue, before: before });
      state.decisions[sha] = decision;
      paintDecision(sha, decision);
      state.queues = res.queues;
      renderQueues();
      setStatus(`saved: ${res.row.uri.split("/").pop()} → ${LABELS[decision]}`, "saved");
    } catch (e) {
      setStatus(`NOT saved (${e.message}): try again`, "error");
    } finally {
      state.pending--;
      if (art) art.classList.remove("saving");
    }
  });
}

function undo() {
  return queueWrite(async () => {
    const last = state.undo.pop();
    if (!last) { setStatus("nothing to undo"); return; }
    try {
      await api("/api/decide", { sha256: last.sha256, queue: last.queue, decision: last.before || "cleared" });
      if (last.before) state.decisions[last.sha256] = last.before; else delete state.decisions[last.sha256];
      paintDecision(last.sha256, last.before);
      const art = document.querySelector(`article[data-sha="${last.sha256}"]`);
      if (art) select(Number(art.dataset.index));
      setStatus(`undone: ${last.before ? "back to " + LABELS[last.before] : "no decision"}`, "saved");
    } catch (e) {
      state.undo.push(last);
      setStatus(`undo NOT saved (${e.message})`, "error");
    }
  });
}

function showQueue(name) {
  if (!(name in state.queues)) return;
  state.queue = name;
  state.cards = [];
  state.total = 0;
  state.current = -1;
  $("#cards").textContent = "";
  history.replaceState(null, "", `#${name}`);
  renderQueues();
  window.scrollTo(0, 0);
  loadMore();
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const card = state.cards[state.current];
  const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  if (key in KEYS) {
    ev.preventDefault();
    if (card) decide(card.sha256, card.queue, KEYS[key], true);
  } else if (key === "z") {
    ev.preventDefault();
    undo();
  } else if (key === "ArrowRight" || key === "ArrowLeft" || key === "ArrowDown" || key === "ArrowUp") {
    ev.preventDefault();
    const step = key === "ArrowRight" ? 1 : key === "ArrowLeft" ? -1 : key === "ArrowDown" ? columns() : -columns();
    select(Math.min(state.cards.length - 1, Math.max(0, state.current + step)));
  }
});

async function start() {
  try {
    const s = await refreshState();
    const wanted = location.hash.slice(1);
    const names = Object.keys(s.queues);
    const first = names.find((n) => s.queues[n].total > 0) || names[0];
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) loadMore();
    }, { rootMargin: "600px" }).observe($("#more"));
    // and on every scroll: an observer only reports changes, and browsers throttle it in background tabs
    window.addEventListener("scroll", () => { if (sentinelVisible()) loadMore(); }, { passive: true });
    showQueue(names.includes(wanted) ? wanted : first);
    setStatus(`${Object.values(s.queues).reduce((a, q) => a + q.decided, 0)} decisions so far`);
    setInterval(() => refreshState().catch((e) => setStatus(`server unreachable: ${e.message}`, "error")), POLL_MS);
  } catch (e) {
    setStatus(`cannot reach negset review: ${e.message}`, "error");
  }
}

start();
