// zoo serve: the web page. Plain JavaScript, no build step, nothing loaded from outside.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("zoo-token") || "", info: null, blobUrls: [] };

// ---- talking to the API ----------------------------------------------------------------------
function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) {
    $("token-bar").hidden = false;
    throw new Error((body && body.error) || "this server needs a token");
  }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

// thumbnails: a plain <img src> without a token; with one, fetched with the header into a blob URL
async function setThumb(img, url) {
  if (!state.token) { img.src = url; return; }
  try {
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) throw new Error(response.statusText);
    const blobUrl = URL.createObjectURL(await response.blob());
    state.blobUrls.push(blobUrl);
    img.src = blobUrl;
  } catch (e) { img.alt = "no preview"; }
}

function releaseBlobs() {
  state.blobUrls.forEach((u) => URL.revokeObjectURL(u));
  state.blobUrls = [];
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

// ---- views -------------------------------------------------------------------------------------
function showView() {
  const name = (location.hash || "#search").slice(1);
  const view = ["search", "compare", "review"].includes(name) ? name : name === "duplicates" ? "review" : "search";
  for (const v of ["search", "compare", "review"]) $(`view-${v}`).hidden = v !== view;
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.view === view));
  if (view === "review" && !review.order) loadReview();
}

async function loadInfo() {
  try {
    const info = await api("/api/info");
    state.info = info;
    $("token-bar").hidden = true;
    $("info").innerHTML = "";
    const parts = [[`${info.count}`, " items · "], [info.architecture, " · weights "], [info.weights, ""]];
    for (const [bold, rest] of parts) {
      const b = document.createElement("b");
      b.textContent = bold;
      $("info").append(b, rest);
    }
    $("info").title = `${info.index}\n${info.description}`;
    $("tab-review").hidden = !info.duplicates;
    for (const id of ["review-plan", "review-move", "review-all-but-one"]) $(id).hidden = info.read_only;
    if (info.duplicates && location.hash === "#review" && !review.order) loadReview();
    showMessage("");
  } catch (e) {
    $("info").textContent = "not connected";
    showMessage(e.message);
  }
}

// ---- result cards ------------------------------------------------------------------------------
function card(hit, onClick) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.id = hit.id ?? "";
  node.dataset.path = hit.path;
  node.title = hit.path;
  const img = node.querySelector("img");
  img.alt = hit.name;
  if (hit.thumbnail) {
    setThumb(img, hit.thumbnail);
  } else {  // a duplicate-group member the index does not hold: no thumbnail (files only by id)
    const placeholder = document.createElement("span");
    placeholder.className = "placeholder";
    placeholder.textContent = "not in the index";
    img.replaceWith(placeholder);
  }
  node.querySelector(".rank").textContent = hit.rank ? `#${hit.rank}` : "";
  if (hit.cosine !== undefined) {
    node.querySelector(".cos").textContent = hit.cosine.toFixed(3);
    node.querySelector(".cos").title = `cosine ${hit.cosine.toFixed(4)} · score ${hit.score.toFixed(4)}`;
    node.querySelector(".bar-fill").style.width = `${Math.max(0, Math.min(1, hit.cosine)) * 100}%`;  // the cosine shown
  } else {
    node.querySelector(".bar").remove();
  }
  node.querySelector(".label").textContent = hit.label || "";
  if (hit.frame !== null && hit.frame !== undefined) {
    node.querySelector(".frame").textContent = `frame ${hit.frame} · ${Number(hit.time).toFixed(2)} s`;
  }
  node.querySelector(".name").textContent = hit.name;
  if (onClick) node.addEventListener("click", () => onClick(hit));
  else node.disabled = true;
  return node;
}

function showResults(data, note) {
  releaseBlobs();
  const grid = $("results");
  grid.innerHTML = "";
  data.results.forEach((hit, i) => {
    const node = card(hit, (h) => searchById(h.id));
    if (i === 0) node.classList.add("first");
    grid.append(node);
  });
  $("results-note").textContent = `${note} · top ${data.k} in ${data.took_ms} ms · click a result to search by it`;
}

// ---- search ------------------------------------------------------------------------------------
function k() { return Number($("k").value); }

async function searchByFile(file) {
  if (!file) return;
  const preview = $("query-preview");
  if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
  preview.dataset.url = URL.createObjectURL(file);
  preview.src = preview.dataset.url;
  preview.hidden = false;
  state.lastQuery = { kind: "file", file };
  $("query-meta").textContent = `${file.name} · ${(file.size / 1024).toFixed(0)} KiB`;
  $("results-note").textContent = "searching…";
  showVerdict("");
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const data = await api(`/api/search?k=${k()}`, { method: "POST", body: form });
    showMessage("");
    showResults(data, `query: ${file.name}`);
    checkFile(file);
  } catch (e) {
    showMessage(e.message);
    $("results-note").textContent = "no results";
    $("results").innerHTML = "";
  }
}

// the upload check: is the query a copy of an indexed item, or new? (POST /api/check)
function showVerdict(text, kind) {
  const box = $("verdict");
  box.textContent = text || "";
  box.className = `verdict ${kind || ""}`;
  box.hidden = !text;
}

async function checkFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const c = await api("/api/check", { method: "POST", body: form });
    const near = c.nearest ? c.nearest.name : "nothing";
    if (!c.calibrated) {
      showVerdict(`Copy check: no calibration for this model (${c.note}); nearest ${near} at cosine ${c.cosine === null ? "–" : c.cosine.toFixed(3)}.`, "");
      return;
    }
    const p = c.expected_precision === null ? "unknown" : c.expected_precision.toFixed(3);
    if (c.verdict === "copy") {
      showVerdict(`Copy of ${near}: cosine ${c.cosine.toFixed(3)} ≥ threshold ${c.threshold.toFixed(3)} (expected precision ${p} among ${c.index_items} items).`, "copy");
    } else {
      showVerdict(`New: nearest ${near} at cosine ${c.cosine === null ? "–" : c.cosine.toFixed(3)} < threshold ${c.threshold.toFixed(3)} (a copy verdict there has expected precision ${p}).`, "new");
    }
    $("verdict").title = c.estimate;
  } catch (e) {
    showVerdict(`Copy check: ${e.message}`, "");
  }
}

async function searchById(id) {
  location.hash = "#search";
  state.lastQuery = { kind: "id", id };
  showVerdict("");  // an indexed item is not an upload to check
  $("results-note").textContent = "searching…";
  try {
    const data = await api(`/api/items/${id}/similar?k=${k()}`);
    const preview = $("query-preview");
    preview.hidden = false;
    await setThumb(preview, `${data.query.thumbnail}?size=512`);
    $("query-meta").textContent = `indexed item #${id} · ${data.query.label ? data.query.label + " · " : ""}${data.query.name}`;
    showMessage("");
    showResults(data, `more like #${id} (${data.query.name})`);
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (e) {
    showMessage(e.message);
  }
}

// drop zones: click (the label opens the file input), drag and drop
function dropZone(zone, input, onFile) {
  input.addEventListener("change", () => { if (input.files[0]) onFile(input.files[0]); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) onFile(file);
  });
}

// ---- compare -----------------------------------------------------------------------------------
const pair = { a: null, b: null };

function setCompareFile(side, file) {
  pair[side] = file;
  const img = $(`compare-preview-${side}`);
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = URL.createObjectURL(file);
  img.src = img.dataset.url;
  img.hidden = false;
  runCompare();
}

async function runCompare() {
  if (!pair.a || !pair.b) {
    $("compare-cosine").textContent = pair.a || pair.b ? "now the other image" : "choose two images";
    return;
  }
  const form = new FormData();
  form.append("a", pair.a, pair.a.name);
  form.append("b", pair.b, pair.b.name);
  $("compare-cosine").textContent = "comparing…";
  try {
    const data = await api("/api/compare", { method: "POST", body: form });
    $("compare-score").textContent = data.score.toFixed(3);
    $("compare-meter").style.width = `${data.score * 100}%`;
    $("compare-cosine").textContent = `cosine ${data.cosine.toFixed(4)}`;
    showMessage("");
  } catch (e) {
    $("compare-score").textContent = "–";
    $("compare-meter").style.width = "0";
    $("compare-cosine").textContent = "";
    showMessage(e.message);
  }
}

// ---- reviewing duplicates ----------------------------------------------------------------------
// Pages of groups come from /api/review (never all of them); the choices made (what to keep, what
// to move, which groups are reviewed) live here, per group number, across pages.
const review = { offset: 0, limit: 10, total: 0, groups: new Map(), choices: new Map(), plan: null };
const FACTS = [
  ["pixels", "pixels", (f) => (f.pixels ? `${f.width}×${f.height}` : "–")],
  ["bytes", "bytes", (f) => (f.bytes == null ? "–" : `${(f.bytes / 1024).toFixed(1)} KiB`)],
  ["format", "format", (f) => f.format || "–"],
  ["quality", "JPEG quality", (f) => (f.lossless ? "lossless" : f.quality == null ? "–" : `~${f.quality}`)],
  ["sharpness", "sharpness", (f) => (f.sharpness == null ? "–" : f.sharpness.toFixed(0))],
  ["date", "EXIF date", (f) => f.date || "–"],
];

function range(lo, hi) {
  return lo.toFixed(3) === hi.toFixed(3) ? lo.toFixed(3) : `${lo.toFixed(3)}–${hi.toFixed(3)}`;
}

function choiceOf(g) {
  if (!review.choices.has(g.group)) {
    review.choices.set(g.group, { keep: g.keep ? g.keep.id : null, move: new Set(), reviewed: false });
  }
  return review.choices.get(g.group);
}

function movable(g, keepId) {
  return g.members.filter((m) => m.id !== null && m.id !== keepId && !m.unmovable).map((m) => m.id);
}

function allButOne(g) {
  const c = choiceOf(g);
  c.move = new Set(movable(g, c.keep));
  c.reviewed = true;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function zoom(member) {
  setThumb($("zoom-img"), `${member.thumbnail}?size=512`);
  $("zoom-caption").textContent = member.path;
  $("zoom").hidden = false;
}

function renderGroup(g) {
  const c = choiceOf(g);
  const box = el("div", "review-group");
  box.dataset.group = g.group;
  const head = el("div", "group-head");
  head.append(el("span", `kind ${g.kind}`, g.kind));
  head.append(el("span", "", g.kind === "exact" ? `group ${g.group}: ${g.size} identical files`
    : `group ${g.group}: ${g.size} images, cosine ${range(g.min_similarity, g.max_similarity)}`));
  const reviewed = el("label", "reviewed-label");
  const tick = el("input", "reviewed");
  tick.type = "checkbox";
  tick.checked = c.reviewed;
  tick.addEventListener("change", () => { c.reviewed = tick.checked; });
  reviewed.append(tick, " reviewed");
  const one = el("button", "all-but-one", "Select all but one");
  one.type = "button";
  one.addEventListener("click", () => { allButOne(g); redraw(); });
  head.append(reviewed, one);
  box.append(head);
  if (g.keep) {
    const kept = g.members[g.keep.index];
    box.append(el("div", "keep-reasons", `Suggested: keep ${kept.name}: ${g.keep.reasons.join("; ") || "the only file left"}`));
  }
  const row = el("div", "members");
  const differs = {};
  for (const [key, , show] of FACTS) {
    differs[key] = new Set(g.members.filter((m) => m.facts && m.facts.format).map((m) => show(m.facts))).size > 1;
  }
  g.members.forEach((m, i) => {
    const card = el("div", "member");
    card.dataset.id = m.id ?? "";
    card.dataset.path = m.path;
    if (m.id === c.keep) card.classList.add("kept");
    if (c.move.has(m.id)) card.classList.add("to-move");
    if (m.gone) card.classList.add("gone");
    const thumb = el("div", "thumb");
    if (m.thumbnail) {
      const img = el("img");
      img.alt = m.name;
      setThumb(img, m.thumbnail);
      img.addEventListener("click", () => zoom(m));
      img.title = "click to zoom";
      thumb.append(img);
    } else {
      thumb.append(el("span", "placeholder", m.gone ? "gone" : "not in the index"));
    }
    card.append(thumb);
    const line = el("div", "member-line");
    line.append(el("b", "", `${i + 1}`), " ");
    const keepLabel = el("label", "");
    const radio = el("input", "keep-choice");
    radio.type = "radio";
    radio.name = `keep-${g.group}`;
    radio.checked = m.id === c.keep;
    radio.disabled = m.id === null || m.gone;
    radio.addEventListener("change", () => {
      const wasChosen = c.move.size > 0;
      c.keep = m.id;
      c.move.delete(m.id);
      if (wasChosen) c.move = new Set(movable(g, c.keep));
      redraw();
    });
    keepLabel.append(radio, " keep");
    const moveLabel = el("label", "");
    const box2 = el("input", "move-choice");
    box2.type = "checkbox";
    box2.checked = c.move.has(m.id);
    box2.disabled = m.id === null || m.id === c.keep || !!m.unmovable;
    box2.addEventListener("change", () => {
      if (box2.checked) c.move.add(m.id); else c.move.delete(m.id);
      c.reviewed = true;
      redraw();
    });
    moveLabel.append(box2, " move");
    line.append(keepLabel, " ", moveLabel);
    if (g.keep && g.keep.index === i) line.append(" ", el("span", "badge suggested", "suggested"));
    if (m.protected) line.append(" ", el("span", "badge protected", "protected"));
    if (m.gone) line.append(" ", el("span", "badge gone", "gone"));
    else if (m.unmovable) line.append(" ", el("span", "badge unmovable", m.unmovable));
    card.append(line);
    const table = el("table", "facts");
    for (const [key, label, show] of FACTS) {
      const tr = el("tr", differs[key] ? "differs" : "");
      tr.append(el("th", "", label), el("td", `fact-${key}`, m.facts && m.facts.format ? show(m.facts) : "–"));
      table.append(tr);
    }
    const tr = el("tr", "");
    tr.append(el("th", "", "path"), el("td", "fact-path", m.path));
    table.append(tr);
    card.append(table);
    row.append(card);
  });
  box.append(row);
  if (g.pairs && g.pairs.length) {
    const pairs = el("div", "pairs muted");
    pairs.textContent = "pair scores: " + g.pairs.slice(0, 30).map(([a, b, s]) => `${a + 1}–${b + 1} ${s.toFixed(3)}`).join(" · ")
      + (g.pairs.length > 30 ? ` · … ${g.pairs.length - 30} more` : "");
    box.append(pairs);
  }
  return box;
}

function redraw() {
  const box = $("review-groups");
  box.innerHTML = "";
  releaseBlobs();
  for (const gid of review.order || []) box.append(renderGroup(review.groups.get(gid)));
  const chosen = [...review.choices.values()].reduce((n, c) => n + c.move.size, 0);
  $("review-plan").textContent = `Dry run (${chosen} file${chosen === 1 ? "" : "s"})`;
  review.plan = null;
  $("review-move").disabled = true;
}

async function loadReview() {
  try {
    const data = await api(`/api/review?offset=${review.offset}&limit=${review.limit}`);
    review.total = data.total;
    review.order = data.groups.map((g) => g.group);
    data.groups.forEach((g) => review.groups.set(g.group, g));
    const last = Math.min(review.offset + review.limit, data.total);
    $("review-note").textContent = `${data.total} groups, largest and most similar first (cosine ≥ ${data.threshold}) · `
      + `keep rules: ${data.rules.join(", ")} · moves go to ${data.quarantine}`
      + (data.protect.length ? ` · protected: ${data.protect.join(", ")}` : "");
    $("review-page").textContent = data.total ? `groups ${review.offset + 1}–${last} of ${data.total}` : "no duplicates found";
    $("review-prev").disabled = review.offset === 0;
    $("review-next").disabled = last >= data.total;
    redraw();
    loadBatches();
    showMessage("");
  } catch (e) {
    showMessage(e.message);
  }
}

function chosenGroups() {
  return [...review.choices.entries()].filter(([, c]) => c.move.size && c.keep !== null)
    .map(([group, c]) => ({ group, keep: c.keep, move: [...c.move] }));
}

async function write(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

async function planMoves() {
  const groups = chosenGroups();
  const summary = $("review-summary");
  if (!groups.length) {
    summary.hidden = false;
    summary.textContent = "Nothing chosen: tick files to move, or “Select all but one”.";
    return;
  }
  try {
    const plan = await write("/api/review/plan", { groups });
    review.plan = groups;
    summary.hidden = false;
    summary.innerHTML = "";
    summary.append(el("div", "plan-line", `Dry run: ${plan.files} file(s), ${(plan.bytes / 1048576).toFixed(2)} MiB would move to ${plan.quarantine}`
      + (plan.refused.length ? `; ${plan.refused.length} would not:` : ".")));
    const list = el("ul", "refused");
    plan.refused.slice(0, 50).forEach((r) => list.append(el("li", "", `${r.path}: ${r.why}`)));
    summary.append(list);
    $("review-move").disabled = plan.files === 0;
    $("review-move").textContent = `Move ${plan.files} file(s)`;
    showMessage("");
  } catch (e) {
    showMessage(e.message);
  }
}

async function moveFiles() {
  if (!review.plan) return;
  try {
    const done = await write("/api/review/move", { groups: review.plan });
    for (const { group } of review.plan) review.choices.delete(group);
    review.plan = null;
    $("review-summary").textContent = done.batch
      ? `Moved ${done.moved.length} file(s) (batch ${done.batch})` + (done.refused.length ? `; ${done.refused.length} not moved` : "")
      : "Nothing was moved.";
    await loadReview();
  } catch (e) {
    showMessage(e.message);
  }
}

async function loadBatches() {
  const box = $("review-batches");
  try {
    const data = await api("/api/review/batches");
    box.innerHTML = "";
    data.batches.forEach((b) => {
      const row = el("div", "batch");
      row.dataset.batch = b.batch;
      row.append(el("span", "", `batch ${b.batch}: ${b.files} file(s), ${b.in_quarantine} in quarantine `));
      const undo = el("button", "undo", "Undo");
      undo.type = "button";
      undo.disabled = b.in_quarantine === 0;
      undo.addEventListener("click", async () => {
        try {
          const r = await write("/api/review/undo", { batch: b.batch });
          $("review-summary").hidden = false;
          $("review-summary").textContent = `Restored ${r.restored} file(s) of batch ${r.batch}`;
          await loadReview();
        } catch (e) { showMessage(e.message); }
      });
      row.append(undo);
      box.append(row);
    });
  } catch (e) { box.textContent = ""; }
}

function selectAllReviewed() {
  for (const [gid, c] of review.choices) {
    const g = review.groups.get(gid);
    if (c.reviewed && g) allButOne(g);
  }
  redraw();
}

// ---- wiring --------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  dropZone($("search-drop"), $("query-file"), searchByFile);
  dropZone($("compare-drop-a"), $("compare-file-a"), (f) => setCompareFile("a", f));
  dropZone($("compare-drop-b"), $("compare-file-b"), (f) => setCompareFile("b", f));
  $("k").addEventListener("change", () => {
    if (state.lastQuery?.kind === "file") searchByFile(state.lastQuery.file);
    else if (state.lastQuery?.kind === "id") searchById(state.lastQuery.id);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) { location.hash = "#search"; searchByFile(file); }
  });
  $("token-bar").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("zoo-token", state.token);
    loadInfo();
  });
  window.addEventListener("hashchange", showView);
  $("review-prev").addEventListener("click", () => { review.offset = Math.max(0, review.offset - review.limit); loadReview(); });
  $("review-next").addEventListener("click", () => { review.offset += review.limit; loadReview(); });
  $("review-all-but-one").addEventListener("click", selectAllReviewed);
  $("review-plan").addEventListener("click", planMoves);
  $("review-move").addEventListener("click", moveFiles);
  $("zoom").addEventListener("click", () => { $("zoom").hidden = true; });
  showView();
  loadInfo();
});
