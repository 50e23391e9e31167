// tltool labeler: one image at a time; keys 1-9 label (and move on), arrows move, u undoes, s skips.
// Every change is POSTed to /api/set at once, in order; the server writes labels.csv atomically.
"use strict";

const $ = (id) => document.getElementById(id);
const S = { dataset: "", items: [], classes: [], idx: 0, history: [], preload: [] };
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

async function post(change) {
  const response = await fetch("/api/set", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(change),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// Changes are sent one after another, so an undo never overtakes the label it undoes.
function send(change) {
  setPending(1);
  chain = chain
    .then(() => post(change))
    .catch((error) => {
      message(`not saved (${error.message}); reloading the saved labels`, true);
      return load(false);
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
    $("current").textContent = $("review").textContent = $("name").textContent = "";
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
  // neighbours are fetched now, so the next key press shows its image at once
  S.preload = [1, 2, 3, -1]
    .map((d) => S.items[S.idx + d])
    .filter(Boolean)
    .map((next) => Object.assign(new Image(), { src: imgUrl(next.path) }));
}

function go(index) {
  S.idx = Math.max(0, Math.min(index, S.items.length));
  message("");
  render();
}

function change(label, skipped) {
  const item = S.items[S.idx];
  if (!item) return;
  S.history.push({ idx: S.idx, label: item.label, skipped: item.skipped });
  item.label = label;
  item.skipped = skipped;
  send({ path: item.path, label, skipped });
  go(S.idx + 1);
}

function assign(key) {
  if (key < S.classes.length) change(S.classes[key], false);
}

function skip() {
  const item = S.items[S.idx];
  if (item) change(item.label, true);
}

function undo() {
  const last = S.history.pop();
  if (!last) {
    message("nothing to undo");
    return;
  }
  const item = S.items[last.idx];
  item.label = last.label;
  item.skipped = last.skipped;
  send({ path: item.path, label: last.label, skipped: last.skipped });
  go(last.idx);
  message(`undone: ${item.path}`);
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || document.body.dataset.ready !== "1") return;
  const key = event.key;
  if (key >= "1" && key <= "9") assign(Number(key) - 1);
  else if (key === "ArrowRight") go(S.idx + 1);
  else if (key === "ArrowLeft") go(S.idx - 1);
  else if (key === "u" || key === "U") undo();
  else if (key === "s" || key === "S") skip();
  else return;
  event.preventDefault();
});

$("image").addEventListener("error", () => {
  if (S.items[S.idx]) message("this file cannot be decoded; press s to skip it", true);
});

async function load(fromStart = true) {
  const response = await fetch("/api/state");
  const state = await response.json();
  S.dataset = state.dataset;
  S.classes = state.classes;
  S.items = state.items;
  if (fromStart) S.idx = state.start;
  document.title = `label ${state.dataset} · tltool`;
  document.body.dataset.ready = "1";
  render();
}

load().catch((error) => message(`cannot load the dataset: ${error.message}`, true));
