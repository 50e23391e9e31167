// tltool labeler: one image at a time; keys 1-9 label (and move on), arrows move, u undoes, s skips.
// With assistance: Enter accepts the suggested class; g opens a grid of photos suggested as one class, a click
// marks a misfit (a number key on a tile labels it at once), Enter confirms the rest, Esc goes back. u undoes the
// last action, a whole grid's confirm included.
// Every change is POSTed at once, in order; the server writes labels.csv atomically.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  dataset: "", items: [], classes: [], idx: 0, history: [], preload: [],
  assist: null, revision: "", suggestions: {}, order: [], byPath: {},
  mode: "one", grid: null,
};
const POLL_MS = 1000;
let chain = Promise.resolve();
let pending = 0;

function imgUrl(path) {
  return "/img/" + path.split("/").map(encodeURIComponent).join("/");
}

function message(text, error = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", error);
}

function setPending(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
}

async function post(change, route = "/api/set") {
  const response = await fetch(route, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(change),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// Changes are sent one after another, so an undo never overtakes the label it undoes.
function send(change, route = "/api/set") {
  setPending(1);
  chain = chain
    .then(() => post(change, route))
    .catch((error) => {
      message(`not saved (${error.message}); reloading the saved labels`, true);
      // a reload that fails too says why, and leaves the chain whole: a rejected chain skipped every later label
      return load(false).catch((again) => message(`not saved (${error.message}); ${again.message}`, true));
    })
    .finally(() => setPending(-1));
}

function counts() {
  const byClass = {};
  for (const c of S.classes) byClass[c] = 0;
  let labelled = 0, skipped = 0;
  for (const item of S.items) {
    if (item.label) {
      labelled += 1;
      byClass[item.label] = (byClass[item.label] || 0) + 1;
    } else if (item.skipped) {
      skipped += 1;
    }
  }
  return { byClass, labelled, skipped, left: S.items.length - labelled - skipped };
}

function renderHeader() {
  const c = counts();
  $("progress").textContent =
    `${c.labelled} / ${S.items.length} labelled · ${c.skipped} skipped · ${c.left} left`;
  const item = S.items[S.idx];
  const suggested = item && item.review ? item.review.suggested : "";
  const list = $("classes");
  list.replaceChildren();
  Object.keys(c.byClass).forEach((name) => {
    const key = S.classes.indexOf(name);
    const li = document.createElement("li");
    li.dataset.class = name;
    if (key >= 0) {
      const kbd = document.createElement("kbd");
      kbd.textContent = String(key + 1);
      li.append(kbd, " ");
      li.addEventListener("click", () => assign(key));
    }
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = String(c.byClass[name]);
    li.append(label, " ", count);
    li.classList.toggle("current", Boolean(item && item.label === name));
    li.classList.toggle("suggested", Boolean(suggested && suggested === name));
    list.append(li);
  });
}

function render() {
  renderHeader();
  const item = S.items[S.idx];
  $("done").hidden = Boolean(item);
  $("image").hidden = !item;
  if (!item) {
    const c = counts();
    $("position").textContent = `end of ${S.items.length} images`;
    $("current").textContent = $("review").textContent = $("name").textContent = $("suggestion").textContent = "";
    $("done").replaceChildren(
      `End of the list: ${c.labelled} of ${S.items.length} labelled, ${c.skipped} skipped, ${c.left} left. ` +
      "When done: ",
      Object.assign(document.createElement("code"),
        { textContent: `tltool label export ${S.dataset} --val-fraction 0.2` }),
      " (← goes back)");
    return;
  }
  $("image").src = imgUrl(item.path);
  $("position").textContent = `image ${S.idx + 1} of ${S.items.length}`;
  $("current").textContent = item.label ? `label: ${item.label}` : item.skipped ? "skipped" : "no label";
  $("current").classList.toggle("labelled", Boolean(item.label));
  const r = item.review;
  $("review").textContent = r
    ? `review: ${r.label ? `was ${r.label}` : "unlabelled"}` +
      (r.suggested ? ` · suggested ${r.suggested}` : "") + (r.score ? ` (${r.score})` : "")
    : "";
  $("name").textContent = item.path;
  renderSuggestion(item);
  // neighbours are fetched now, so the next key press shows its image at once
  S.preload = [1, 2, 3, -1]
    .map((d) => S.items[S.idx + d])
    .filter(Boolean)
    .map((next) => Object.assign(new Image(), { src: imgUrl(next.path) }));
}

function suggestionFor(item) {
  return item && !item.label && !item.skipped ? S.suggestions[item.path] : undefined;
}

function renderSuggestion(item) {
  const s = suggestionFor(item);
  $("suggestion").textContent = s ? `suggested: ${s[0]} ${Math.round(s[1] * 100)} % · Enter accepts` : "";
  for (const li of $("classes").children) {
    li.classList.toggle("assisted", Boolean(s && li.dataset.class === s[0]));
  }
}

function renderAssist() {
  const a = S.assist;
  if (!a || a.state === "off") {
    $("assist").textContent = "";
    return;
  }
  const pct = (t) => (t.judged ? ` (${Math.round((100 * t.right) / t.judged)} %)` : "");
  let text = `assist: ${a.message}`;
  if (a.state === "ready" && !a.version) text = "assist: label a few photos of each class to get suggestions";
  if (a.version) {
    text = `assist: head #${a.version} trained on ${a.trained_on} labels · its suggestions right ` +
      `${a.since_retrain.right} of ${a.since_retrain.judged}${pct(a.since_retrain)} · all heads ` +
      `${a.all.right} of ${a.all.judged}${pct(a.all)}`;
  }
  if (a.state === "failed") text = `assist off: ${a.message}`;
  $("assist").textContent = text;
}

function go(index) {
  S.idx = Math.max(0, Math.min(index, S.items.length));
  message("");
  render();
}

// The next photo: the first open one in the assistant's order (typical, uncertain or grouped), else the next.
function nextIndex() {
  for (const path of S.order) {
    const i = S.byPath[path];
    const item = S.items[i];
    if (i !== undefined && i !== S.idx && !item.label && !item.skipped) return i;
  }
  return S.idx + 1;
}

// The history holds, for each action, what the photos it changed were before: one photo, or a grid's confirm.
// By path, not position: a reload after a failed save may list the photos in another order.
function remember(paths) {
  if (!paths.length) return;
  S.history.push(paths.map((path) => {
    const item = S.items[S.byPath[path]];
    return { path, label: item.label, skipped: item.skipped, assisted: item.assisted };
  }));
  saveHistory();
}

// The history outlives a reload of this tab (sessionStorage: per tab, so another tab never undoes this one's
// actions; an undo whose photo another tab changed since is refused by the server like any stale change).
const HISTORY_LIMIT = 1000;
const historyKey = () => `tltool-label-undo:${S.datasetId}`;

function saveHistory() {
  S.history = S.history.slice(-HISTORY_LIMIT);
  try {
    sessionStorage.setItem(historyKey(), JSON.stringify(S.history));
  } catch (error) {
    // storage off or full: the undo history lasts until the page is reloaded, as it did before
  }
}

function restoreHistory() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(historyKey()) || "[]");
    S.history = Array.isArray(saved) ? saved.filter((group) => Array.isArray(group)) : [];
  } catch (error) {
    S.history = [];
  }
}

// What this page believes a photo's state is: the server refuses a change when another tab changed it since
// (a stale skip or undo would erase that tab's label), and the page reloads the saved labels.
function expected(item) {
  return { label: item.label || null, skipped: Boolean(item.skipped) };
}

function change(label, skipped, assisted = false) {
  const item = S.items[S.idx];
  if (!item) return;
  remember([item.path]);
  const expect = expected(item);
  item.label = label;
  item.skipped = skipped;
  item.assisted = assisted;
  send({ path: item.path, label, skipped, assisted, expect });
  go(nextIndex());
}

function accept() {
  const s = suggestionFor(S.items[S.idx]);
  if (s) change(s[0], false, true);
  else message("no suggestion for this photo");
}

function assign(key) {
  if (key < S.classes.length) change(S.classes[key], false);
}

function skip() {
  const item = S.items[S.idx];
  if (item) change(item.label, true);
}

function undo() {
  // a photo gone since is not undone
  const group = (S.history.pop() || []).filter((before) => before && before.path in S.byPath);
  saveHistory();
  if (!group.length) {
    message("nothing to undo");
    return;
  }
  const states = group.map((before) => {
    const item = S.items[S.byPath[before.path]];
    const expect = expected(item);
    Object.assign(item, { label: before.label, skipped: before.skipped, assisted: before.assisted });
    return { path: item.path, label: before.label, skipped: before.skipped, assisted: Boolean(before.assisted),
             expect };
  });
  send(states.length === 1 ? states[0] : { items: states });  // a grid's confirm is undone in one write
  if (S.mode === "grid") closeGrid();
  go(S.byPath[group[0].path]);
  renderHeader();
  message(group.length === 1 ? `undone: ${group[0].path}` : `undone: ${group.length} photos`);
}

function oneKey(key) {
  if (key >= "1" && key <= "9") assign(Number(key) - 1);
  else if (key === "Enter") accept();
  else if (key === "g" || key === "G") openGrid();
  else if (key === "ArrowRight") go(S.idx + 1);
  else if (key === "ArrowLeft") go(S.idx - 1);
  else if (key === "u" || key === "U") undo();
  else if (key === "s" || key === "S") skip();
  else return false;
  return true;
}

function gridKey(key) {
  if (key >= "1" && key <= "9" && S.grid.hover) labelTile(S.grid.hover, Number(key) - 1);
  else if (key === "Enter") confirmGrid();
  else if (key === "Escape" || key === "g" || key === "G") closeGrid();
  else if (key === "u" || key === "U") undo();
  else return false;
  return true;
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || document.body.dataset.ready !== "1") return;
  const handled = S.mode === "grid" ? gridKey(event.key) : oneKey(event.key);
  if (handled) event.preventDefault();
});

// ------------------------------------------------------------------------------------------ grid
async function openGrid() {
  if (!S.assist || !S.assist.version) {
    message("no suggestions yet: label a few photos of each class first");
    return;
  }
  const response = await fetch("/api/grid");
  const grid = await response.json();
  if (!response.ok || !grid.items.length) {
    closeGrid();
    message(grid.error || (grid.reason ? `no grid yet: ${grid.reason}` :
      "no confident suggestions left: label the uncertain ones one by one"), !response.ok);
    return;
  }
  S.grid = { label: grid.label, items: grid.items, misfits: new Set(), labelled: new Map(), hover: null };
  S.mode = "grid";
  document.body.dataset.mode = "grid";
  renderGrid();
}

function renderGrid() {
  const g = S.grid;
  $("grid-title").textContent =
    `${g.items.length} photos suggested as ${g.label}: click those that are not (or press their class's number ` +
    "on them), Enter confirms the rest, Esc goes back, u undoes";
  const tiles = g.items.map((it) => {
    const tile = document.createElement("figure");
    tile.className = "tile";
    tile.dataset.path = it.path;
    tile.classList.toggle("misfit", g.misfits.has(it.path) || g.labelled.has(it.path));
    const img = Object.assign(document.createElement("img"), { src: imgUrl(it.path), alt: it.path });
    const own = g.labelled.get(it.path);
    const caption = Object.assign(document.createElement("figcaption"),
      { textContent: own ? `labelled ${own}` : `${Math.round(it.p * 100)} %` });
    tile.append(img, caption);
    tile.addEventListener("click", () => toggleMisfit(it.path));
    tile.addEventListener("mouseenter", () => { g.hover = it.path; });
    tile.addEventListener("mouseleave", () => { if (g.hover === it.path) g.hover = null; });
    return tile;
  });
  $("tiles").replaceChildren(...tiles);
}

function toggleMisfit(path) {
  const m = S.grid.misfits;
  if (m.has(path)) m.delete(path);
  else m.add(path);
  renderGrid();
}

// A misfit labelled on its tile: one key instead of a click now and a key later; saved at once like any label.
function labelTile(path, classIndex) {
  const label = S.classes[classIndex];
  if (!label) return;
  const g = S.grid;
  remember([path]);
  g.misfits.delete(path);
  if (label === g.label) g.labelled.delete(path);
  else g.labelled.set(path, label);
  const item = S.items[S.byPath[path]];
  const expect = expected(item);  // another tab's label since the grid opened is refused, not overwritten
  Object.assign(item, { label, skipped: false, assisted: false });
  send({ path, label, skipped: false, assisted: false, expect });
  renderHeader();
  renderGrid();
}

function confirmGrid() {
  const g = S.grid;
  const accepted = g.items.map((it) => it.path).filter((p) => !g.misfits.has(p) && !g.labelled.has(p));
  remember(accepted);
  for (const path of accepted) {
    const item = S.items[S.byPath[path]];
    Object.assign(item, { label: g.label, skipped: false, assisted: true });
  }
  send({ label: g.label, accepted, rejected: [...g.misfits] }, "/api/confirm");
  message(`${accepted.length} labelled ${g.label}; ${g.labelled.size} labelled on their tile; ${g.misfits.size} left for later`);
  renderHeader();
  chain = chain.then(() => (S.mode === "grid" ? openGrid() : null));
}

function closeGrid() {
  S.mode = "one";
  S.grid = null;
  document.body.dataset.mode = "one";
  const here = S.items[S.idx];
  go(here && !here.label && !here.skipped ? S.idx : nextIndex());
}

// ------------------------------------------------------------------------------------------ assistance
async function poll() {
  try {
    const response = await fetch(`/api/assist?since=${S.revision}`);
    const a = await response.json();
    if (a.order) {
      S.suggestions = a.suggestions;
      S.order = a.order;
      S.revision = String(a.revision);
    }
    S.assist = a;
    renderAssist();
    if (S.mode === "one") renderSuggestion(S.items[S.idx]);
    document.body.dataset.assist = a.version ? "suggesting" : a.state;
  } catch (error) {
    /* the next poll tries again */
  }
  if (S.assist && S.assist.state !== "off" && S.assist.state !== "failed") setTimeout(poll, POLL_MS);
}

$("image").addEventListener("error", () => {
  if (S.items[S.idx]) message("this file cannot be read or decoded; press s to skip it", true);
});

async function load(fromStart = true) {
  const response = await fetch("/api/state");
  const state = await response.json().catch(() => ({}));
  // the server's own reason (a labels.csv it cannot read, one that is a link), not "reading undefined"
  if (!response.ok) throw new Error(state.error || response.statusText);
  S.dataset = state.dataset;
  S.datasetId = state.dataset_id;
  S.classes = state.classes;
  S.items = state.items;
  S.byPath = Object.fromEntries(S.items.map((it, i) => [it.path, i]));
  if (fromStart) {
    S.idx = state.start;
    restoreHistory();  // this tab's actions before a reload can still be undone
  }
  document.title = `label ${state.dataset} · tltool`;
  document.body.dataset.ready = "1";
  render();
}

load()
  .then(poll)
  .catch((error) => message(`cannot load the dataset: ${error.message}`, true));
