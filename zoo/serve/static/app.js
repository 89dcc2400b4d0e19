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
  const view = ["search", "compare", "duplicates"].includes(name) ? name : "search";
  for (const v of ["search", "compare", "duplicates"]) $(`view-${v}`).hidden = v !== view;
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.view === view));
  if (view === "duplicates") loadDuplicates();
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
    $("tab-duplicates").hidden = !info.duplicates;
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

// ---- duplicates --------------------------------------------------------------------------------
function range(lo, hi) {
  return lo.toFixed(3) === hi.toFixed(3) ? lo.toFixed(3) : `${lo.toFixed(3)}–${hi.toFixed(3)}`;
}

async function loadDuplicates() {
  const box = $("dup-groups");
  if (box.dataset.loaded) return;
  try {
    const data = await api("/api/duplicates");
    box.dataset.loaded = "1";
    box.innerHTML = "";
    const exact = data.groups.filter((g) => g.kind === "exact").length;
    $("dup-note").textContent = `${data.groups.length} groups (${exact} exact, ${data.groups.length - exact} near, cosine ≥ ${data.threshold}) · ${data.source}`;
    if (!data.groups.length) box.textContent = "No duplicates found.";
    data.groups.forEach((g, i) => {
      const group = document.createElement("div");
      group.className = "group";
      const head = document.createElement("div");
      head.className = "group-head";
      const kind = document.createElement("span");
      kind.className = `kind ${g.kind}`;
      kind.textContent = g.kind;
      const text = document.createElement("span");
      text.textContent = g.kind === "exact"
        ? `group ${i + 1}: ${g.items.length} identical files`
        : `group ${i + 1}: ${g.items.length} images, cosine ${range(g.min_similarity, g.max_similarity)}`;
      head.append(kind, text);
      const grid = document.createElement("div");
      grid.className = "grid";
      g.items.forEach((it) => grid.append(card(it, it.id !== null ? (h) => searchById(h.id) : null)));
      group.append(head, grid);
      box.append(group);
    });
  } catch (e) {
    showMessage(e.message);
  }
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
  showView();
  loadInfo();
});
