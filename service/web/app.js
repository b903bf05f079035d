/*
 * The contrastive web page: one ES module, no framework, no build step, nothing loaded
 * from elsewhere. It talks to the service that serves it, through the public HTTP API.
 *
 * Structure, top to bottom:
 *   1. DOM helpers   $(), el(): every string reaches the DOM as text (textContent or an
 *                    attribute), never as HTML; showAlert(), setStatus(), runBusy()
 *   2. API           the API key (localStorage), request(): adds `Authorization: Bearer KEY`
 *                    and turns every failure (HTTP error or network) into an ApiFailure
 *   3. Header        readiness (/readyz, polled), the model (/v1/models), the API key form
 *   4. File pickers  a drop zone + file input pair -> a list of File objects
 *   5. Classify      labels and templates -> POST /v1/classify -> ranked bars per image
 *   6. Search        collections (list, create), thumbnails made here with a canvas, adding
 *                    images, text or image queries -> a grid of hits
 *   7. start()       wires the events; runs once the module loads (modules are deferred)
 *
 * URLs are relative ("v1/models", not "/v1/models"), so the page also works behind a
 * reverse proxy that serves the service under a path prefix.
 */

// ---- 1. DOM helpers ------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes (`text` sets textContent) and children (nodes or strings). */
function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children); // strings become text nodes
  return node;
}

/** A failure to show: from the API (status, code), the network (status 0), or the page. */
class ApiFailure extends Error {
  constructor(status, code, message, detail = "") {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

/** A problem found before any request was sent (nothing chosen, ...). */
const pageProblem = (message) => new ApiFailure(0, "", message);

function showAlert(box, error, { scroll = true } = {}) {
  if (!(error instanceof ApiFailure)) console.error(error);
  const failure =
    error instanceof ApiFailure ? error : new ApiFailure(0, "page_error", String(error?.message ?? error));
  const meta = [failure.status ? `HTTP ${failure.status}` : "", failure.code, failure.detail]
    .filter(Boolean)
    .join(" · ");
  const lines = [el("p", { class: "alert-message", text: failure.message })];
  if (meta) lines.push(el("p", { class: "alert-meta", "data-testid": "alert-meta", text: meta }));
  box.replaceChildren(...lines);
  box.hidden = false;
  if (scroll) box.scrollIntoView({ block: "nearest" }); // a long panel may hide it
}

function clearAlert(box) {
  box.replaceChildren();
  box.hidden = true;
}

function setStatus(box, text) {
  box.textContent = text;
}

/**
 * Runs `task` for a panel: its buttons are disabled and its busy indicator shown until
 * the task ends; a failure goes to the panel's alert.
 */
async function runBusy(panel, task) {
  const buttons = [...panel.section.querySelectorAll("button")];
  buttons.forEach((b) => (b.disabled = true));
  panel.section.setAttribute("aria-busy", "true");
  panel.busy.hidden = false;
  clearAlert(panel.alert);
  try {
    await task();
  } catch (error) {
    showAlert(panel.alert, error);
    noteUnauthorized(error);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
    panel.section.removeAttribute("aria-busy");
    panel.busy.hidden = true;
  }
}

function chunks(items, size) {
  const out = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

// ---- 2. API ---------------------------------------------------------------------------

const KEY_STORAGE = "contrastive.apiKey";

function loadKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) ?? "";
  } catch {
    return ""; // storage disabled: the page works without a key
  }
}

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: nothing to keep
  }
}

/** fetch() + the API key; resolves to the parsed JSON body, or throws an ApiFailure. */
async function request(path, { method = "GET", json, form } = {}) {
  const key = loadKey();
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets multipart/form-data with its boundary
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch {
    throw new ApiFailure(
      0,
      "unreachable",
      "The service cannot be reached: is it running? Check the network and reload the page."
    );
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) throw failureFrom(response.status, data, Boolean(key));
  if (data === null) {
    throw new ApiFailure(response.status, "bad_response", "The service answered something that is not JSON.");
  }
  return data;
}

function failureFrom(status, data, sentKey) {
  const error = data && typeof data === "object" && data.error ? data.error : {};
  const code = typeof error.code === "string" ? error.code : `http_${status}`;
  const message =
    typeof error.message === "string" ? error.message : `The service answered HTTP ${status}.`;
  if (status === 401) {
    const friendly = sentKey
      ? "The API key was refused: check it, then press Save again."
      : "This server needs an API key: enter it at the top of the page and press Save.";
    return new ApiFailure(status, code, friendly, message);
  }
  return new ApiFailure(status, code, message);
}

// ---- 3. Header: readiness, model, API key ----------------------------------------------

const page = { ready: false, readyModel: "", model: null };

async function pollReadiness() {
  let next = 2000;
  try {
    const response = await fetch("readyz", { cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      setReady("ready", "ok", "The model is loaded and serving");
      page.readyModel = typeof body.model === "string" ? body.model : "";
      next = 15000;
      if (!page.ready) {
        page.ready = true;
        refreshAfterReady();
      }
    } else {
      const status = typeof body.status === "string" ? body.status : `HTTP ${response.status}`;
      setReady(status, status === "failed" ? "bad" : "wait", body.reason ?? "");
      page.ready = false;
    }
  } catch {
    setReady("unreachable", "bad", "The service cannot be reached");
    page.ready = false;
  }
  setTimeout(pollReadiness, next);
}

function setReady(text, tone, title) {
  const pill = $("ready");
  pill.textContent = text;
  pill.className = `pill pill-${tone}`;
  pill.title = typeof title === "string" ? title : "";
}

async function refreshAfterReady() {
  await loadModel(); // first: the collections list marks those of another model
  await loadCollections({ quiet: true }).catch((error) =>
    showAlert($("search-alert"), error, { scroll: false })
  );
}

async function loadModel() {
  const alert = $("header-alert");
  try {
    const list = await request("v1/models");
    const card = list.data[0];
    page.model = card;
    $("model-id").textContent = card.id;
    $("model-dim").textContent = String(card.dim);
    clearAlert(alert);
  } catch (error) {
    page.model = null;
    $("model-id").textContent = page.readyModel || "unknown";
    $("model-dim").textContent = "—";
    showAlert(alert, error, { scroll: false });
    noteUnauthorized(error);
  }
}

function noteUnauthorized(error) {
  if (error instanceof ApiFailure && error.status === 401) {
    $("key-state").textContent = loadKey() ? "refused" : "needed";
  }
}

function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  storeKey(key);
  $("key-state").textContent = key ? "saved" : "no key";
  if (page.ready) refreshAfterReady();
}

// ---- 4. File pickers ------------------------------------------------------------------

/** A drop zone + file input: calls onPick(files) with what was chosen or dropped. */
function filePicker(dropZone, input, onPick) {
  input.addEventListener("change", () => {
    onPick([...input.files]);
    input.value = ""; // choosing the same files again fires `change` again
  });
  dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropZone.classList.add("dragover");
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragover"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragover");
    onPick([...event.dataTransfer.files]);
  });
}

function describeFiles(files, none = "No images chosen") {
  if (!files.length) return none;
  const names = files.slice(0, 4).map((f) => f.name);
  const more = files.length > 4 ? `, … and ${files.length - 4} more` : "";
  const noun = files.length === 1 ? "image" : "images";
  return `${files.length} ${noun}: ${names.join(", ")}${more}`;
}

// ---- 5. Zero-shot classification ------------------------------------------------------

const CLASSIFY_BATCH = 16; // images per request (the service allows max_images, 64 by default)
const classifyState = { files: [], previews: [] };

const splitLabels = (text) => text.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
const splitLines = (text) => text.split("\n").map((s) => s.trim()).filter(Boolean);

function pickClassifyFiles(files) {
  classifyState.files = files;
  $("classify-picked").textContent = describeFiles(files);
}

async function classify() {
  const files = classifyState.files;
  if (!files.length) throw pageProblem("Choose or drop at least one image first.");
  const labels = splitLabels($("labels").value);
  const templates = splitLines($("templates").value);
  const results = [];
  try {
    for (const batch of chunks(files, CLASSIFY_BATCH)) {
      const form = new FormData();
      batch.forEach((file) => form.append("files", file, file.name));
      // One JSON array per field: a label may itself contain commas or start with "[".
      form.append("labels", JSON.stringify(labels));
      if (templates.length) form.append("templates", JSON.stringify(templates));
      const data = await request("v1/classify", { method: "POST", form });
      batch.forEach((file, i) => results.push({ file, ranking: data.results[i].ranking }));
    }
  } finally {
    renderClassification(results); // after a failure: none, rather than stale ones
  }
}

function renderClassification(results) {
  classifyState.previews.forEach((url) => URL.revokeObjectURL(url));
  classifyState.previews = [];
  $("classify-results").replaceChildren(...results.map(classificationCard));
}

function classificationCard({ file, ranking }) {
  const url = URL.createObjectURL(file);
  classifyState.previews.push(url);
  const thumb = el("img", { class: "result-thumb", src: url, alt: `Your image ${file.name}` });
  const list = el(
    "ol",
    { class: "ranking", "data-testid": "ranking", "aria-label": `Labels for ${file.name}, best first` },
    ranking.map(rankRow)
  );
  const body = el("div", {}, [el("p", { class: "result-name", text: file.name }), list]);
  return el("article", { class: "result", "data-testid": "classify-result" }, [thumb, body]);
}

function rankRow({ label, probability }) {
  const p = Number.isFinite(probability) ? Math.min(1, Math.max(0, probability)) : 0;
  const fill = el("div", { class: "bar-fill" });
  fill.style.width = `${(p * 100).toFixed(2)}%`;
  return el("li", { class: "rank", "data-testid": "rank" }, [
    el("span", { class: "rank-label", "data-testid": "rank-label", title: label, text: label }),
    el("div", { class: "bar", "aria-hidden": "true" }, [fill]),
    el("span", { class: "rank-pct", "data-testid": "rank-pct", text: formatPercent(p) }),
  ]);
}

function formatPercent(p) {
  if (p > 0 && p < 0.001) return "<0.1%";
  return `${(p * 100).toFixed(1)}%`;
}

// ---- 6. Similarity search -------------------------------------------------------------

const THUMB_SIZE = 128; // longest side of the thumbnails stored in item metadata
const THUMB_MAX_CHARS = 48_000; // per data URL: a form field may hold at most 1 MiB
const ADD_BATCH_FILES = 16; // 16 x 48 kB of metadata stays well under that 1 MiB
const ADD_BATCH_BYTES = 8 * 1024 * 1024; // and a request far under the 32 MiB body limit
const THUMB_URL = /^data:image\/(jpeg|png|webp|gif);base64,[A-Za-z0-9+/=]+$/;
const searchState = { addFiles: [], queryFile: null };

function chosenCollection() {
  const name = $("collection-select").value;
  if (!name) throw pageProblem("Create a collection first, or choose one in the list.");
  return name;
}

const collectionsPath = (name, rest = "") => `v1/collections/${encodeURIComponent(name)}${rest}`;

async function loadCollections({ select = $("collection-select").value, quiet = false } = {}) {
  let data;
  try {
    data = await request("v1/collections");
  } catch (error) {
    if (quiet && error.status === 401) return; // the header already says a key is needed
    throw error;
  }
  const options = data.collections.map((c) =>
    el("option", { value: c.name, text: describeCollection(c) })
  );
  if (!options.length) options.push(el("option", { value: "", text: "(none yet: create one)" }));
  const list = $("collection-select");
  list.replaceChildren(...options);
  if (data.collections.some((c) => c.name === select)) list.value = select;
}

function describeCollection(c) {
  const items = `${c.count} item${c.count === 1 ? "" : "s"}`;
  const other = page.model && c.model_id !== page.model.id ? ` · other model (${c.model_id})` : "";
  return `${c.name} — ${items}${other}`;
}

async function createCollection(panel) {
  const name = $("collection-name").value.trim();
  const info = await request("v1/collections", { method: "POST", json: { name } });
  await loadCollections({ select: info.name });
  $("collection-name").value = "";
  setStatus(panel.status, `Created the collection “${info.name}”.`);
}

/** A JPEG data URL, THUMB_SIZE on its longest side; null when the browser cannot read it. */
async function makeThumbnail(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    return null; // not an image this browser reads: the service will say what is wrong
  }
  try {
    const scale = Math.min(1, THUMB_SIZE / Math.max(bitmap.width, bitmap.height));
    const canvas = el("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff"; // transparent pixels become white, as the service does
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    for (const quality of [0.82, 0.6, 0.4]) {
      const url = canvas.toDataURL("image/jpeg", quality);
      if (url.length <= THUMB_MAX_CHARS) return url;
    }
    return null;
  } finally {
    bitmap.close();
  }
}

/** Files -> requests: at most ADD_BATCH_FILES files and ADD_BATCH_BYTES bytes each. */
function addBatches(files) {
  const batches = [];
  let batch = [];
  let bytes = 0;
  for (const file of files) {
    if (batch.length && (batch.length >= ADD_BATCH_FILES || bytes + file.size > ADD_BATCH_BYTES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(file);
    bytes += file.size;
  }
  if (batch.length) batches.push(batch);
  return batches;
}

function pickAddFiles(files) {
  searchState.addFiles = files;
  $("add-picked").textContent = describeFiles(files);
}

async function addImages(panel) {
  const name = chosenCollection();
  const files = searchState.addFiles;
  if (!files.length) throw pageProblem("Choose or drop the images to add first.");
  let added = 0;
  try {
    for (const batch of addBatches(files)) {
      setStatus(panel.status, `Adding images ${added + 1}–${added + batch.length} of ${files.length}…`);
      const thumbs = await Promise.all(batch.map(makeThumbnail));
      const form = new FormData();
      batch.forEach((file) => form.append("files", file, file.name));
      form.append("ids", JSON.stringify(batch.map((f) => f.name)));
      const metadata = batch.map((f, i) => (thumbs[i] ? { filename: f.name, thumbnail: thumbs[i] } : { filename: f.name }));
      form.append("metadata", JSON.stringify(metadata));
      const data = await request(collectionsPath(name, "/items"), { method: "POST", form });
      added += batch.length;
      setStatus(panel.status, `Added ${added} of ${files.length} images to “${name}”; it holds ${data.count} items.`);
    }
  } catch (error) {
    if (added) setStatus(panel.status, `Added ${added} of ${files.length} images before the error below.`);
    else setStatus(panel.status, "");
    throw error;
  }
  pickAddFiles([]);
  await loadCollections({ select: name });
}

function pickQueryFile(files) {
  const file = files[0] ?? null;
  searchState.queryFile = file;
  $("query-picked").textContent = file ? `searching by ${file.name}` : "or drop one here";
  $("query-clear").hidden = !file;
  $("query-text").disabled = Boolean(file);
}

function readK() {
  const k = Number.parseInt($("query-k").value, 10);
  return Number.isNaN(k) ? 12 : k; // out of range: the service says what is allowed
}

async function search(panel) {
  const name = chosenCollection();
  const k = readK();
  $("search-results").replaceChildren(); // after a failure: no stale results
  $("dups-results").replaceChildren();
  setStatus(panel.status, "");
  let data;
  if (searchState.queryFile) {
    const form = new FormData();
    form.append("files", searchState.queryFile, searchState.queryFile.name);
    form.append("k", String(k));
    data = await request(collectionsPath(name, "/search"), { method: "POST", form });
  } else {
    const text = $("query-text").value.trim();
    if (!text) throw pageProblem("Type a text to search for, or choose an image.");
    data = await request(collectionsPath(name, "/search"), { method: "POST", json: { queries: [{ text }], k } });
  }
  const hits = data.results[0] ?? [];
  $("search-results").replaceChildren(...hits.map(hitCard));
  setStatus(panel.status, hits.length ? `${hits.length} best matches in “${name}”.` : `“${name}” holds no items yet.`);
}

function hitCard(hit, rank) {
  const meta = hit.metadata && typeof hit.metadata === "object" ? hit.metadata : {};
  const thumb = typeof meta.thumbnail === "string" && THUMB_URL.test(meta.thumbnail) ? meta.thumbnail : null;
  const picture = thumb
    ? el("img", { class: "hit-thumb", "data-testid": "hit-thumb", src: thumb, alt: hit.id })
    : el("div", { class: "hit-placeholder", "data-testid": "hit-placeholder", text: hit.id });
  const score = typeof hit.score === "number" ? hit.score.toFixed(3) : "?";
  const caption = el("figcaption", {}, [
    el("span", { class: "hit-rank", text: `#${rank + 1}` }),
    el("span", { class: "hit-id", "data-testid": "hit-id", title: hit.id, text: hit.id }),
    el("span", { class: "hit-score", "data-testid": "hit-score", text: `score ${score}` }),
  ]);
  return el("figure", { class: "hit", "data-testid": "hit" }, [picture, caption]);
}

const DUPS_SHOWN = 50; // groups asked for and shown; each id's thumbnail is one GET

function readThreshold() {
  const t = Number.parseFloat($("dups-threshold").value);
  return Number.isNaN(t) ? 0.95 : t; // out of range: the service says what is allowed
}

async function findDuplicates(panel) {
  const name = chosenCollection();
  $("search-results").replaceChildren();
  $("dups-results").replaceChildren(); // after a failure: no stale groups
  setStatus(panel.status, "");
  const body = { threshold: readThreshold(), limit: DUPS_SHOWN };
  const data = await request(collectionsPath(name, "/duplicates"), { method: "POST", json: body });
  const rows = await Promise.all(data.groups.map((g) => groupRow(name, g)));
  $("dups-results").replaceChildren(...rows);
  const how = data.exact ? "every pair compared" : "nearest neighbours only";
  const more = data.truncated ? ` (showing ${data.groups.length} of ${data.n_groups})` : "";
  setStatus(panel.status, `${data.n_groups} group${data.n_groups === 1 ? "" : "s"} in ` +
    `${data.n_items_scanned} items of “${name}”, ${how}${more}.`);
}

async function groupRow(name, group) {
  const figures = await Promise.all(group.ids.map((id) => groupMember(name, id)));
  const range = `${group.min_similarity.toFixed(3)}–${group.max_similarity.toFixed(3)}`;
  const caption = el("p", { class: "dups-caption muted", text: `${group.ids.length} items · similarity ${range}` });
  return el("div", { class: "dups-group", "data-testid": "dups-group" }, [caption, el("div", { class: "dups-members" }, figures)]);
}

async function groupMember(name, id) {
  let thumb = null;
  try { // the thumbnail stored at add time; without one (or on failure), the id alone
    const item = await request(collectionsPath(name, `/items/${encodeURIComponent(id)}`));
    const t = item.metadata?.thumbnail;
    thumb = typeof t === "string" && THUMB_URL.test(t) ? t : null;
  } catch {
    thumb = null;
  }
  const picture = thumb
    ? el("img", { class: "hit-thumb", src: thumb, alt: id })
    : el("div", { class: "hit-placeholder", text: id });
  const caption = el("figcaption", {}, [el("span", { class: "hit-id", "data-testid": "dups-id", title: id, text: id })]);
  return el("figure", { class: "hit" }, [picture, caption]);
}

// ---- 7. Start ---------------------------------------------------------------------------

function panelOf(prefix) {
  return {
    section: $(`${prefix}-panel`),
    busy: $(`${prefix}-busy`),
    alert: $(`${prefix}-alert`),
    status: $(`${prefix}-status`) ?? el("p"),
  };
}

/** Submitting `form` runs `task(panel)` as a busy task of the panel. */
function onSubmit(form, panel, task) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    runBusy(panel, () => task(panel));
  });
}

function start() {
  const classifyPanel = panelOf("classify");
  const searchPanel = panelOf("search");

  $("api-key").value = loadKey();
  $("key-state").textContent = loadKey() ? "saved" : "";
  $("key-form").addEventListener("submit", saveKey);

  // A file dropped outside a drop zone must not make the browser leave the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  filePicker($("classify-drop"), $("classify-files"), pickClassifyFiles);
  onSubmit($("classify-form"), classifyPanel, classify);

  filePicker($("add-drop"), $("add-files"), pickAddFiles);
  filePicker($("query-drop"), $("query-file"), pickQueryFile);
  $("query-clear").addEventListener("click", () => pickQueryFile([]));
  $("collections-refresh").addEventListener("click", () => runBusy(searchPanel, () => loadCollections()));
  onSubmit($("create-form"), searchPanel, createCollection);
  onSubmit($("add-form"), searchPanel, addImages);
  onSubmit($("query-form"), searchPanel, search);
  onSubmit($("dups-form"), searchPanel, findDuplicates);

  pollReadiness();
}

start();
