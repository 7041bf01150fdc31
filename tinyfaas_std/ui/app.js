// The tinyfaas dashboard (SPEC 13): one page over the JSON API, and nothing else.
//
// Strategy: index.html holds the static markup; this file fills it. The page is served under
// `Content-Security-Policy: default-src 'self'`, so everything here is plain DOM work: no inline script or
// style, nothing fetched from another origin, no HTML parsed from strings. Every text that comes from the
// server (names, results, output, errors) enters the page as a text node (`textContent`, `append(string)`),
// never through innerHTML, so what a function returns or prints can never become markup.
//
// The browser asked for the user and password (Basic Auth) when it loaded /ui, and sends them again with each
// same-origin fetch. GET /admin/me says who that is; the role decides which parts are shown and which requests
// are made (the server checks every request anyway: hiding a button is for clarity, not for security).
//
// Polling (the status, the list, the selected function's calls) stops for good the first time the server
// refuses the credentials (401) or this address (429 after failed logins): a page left open after its user was
// deleted would otherwise fail a login with every poll until the server's throttle blocked the whole address.
"use strict";

const POLL = pollOverride();
const STATUS_SECONDS = POLL || 3;   // live server status
const LIST_SECONDS = POLL || 10;    // the list of functions, and the selected function's calls
const HISTORY = 60;         // samples kept for the status charts (3 minutes)
const CALLS_SHOWN = 30;     // newest calls of a function shown in its table and chart

// What each role may do, as users.py grants it (read: describe, logs, versions; call: /function/...).
const RIGHTS = {
  admin: { read: true, change: true, call: true, status: true },
  developer: { read: true, change: true, call: true, status: true },
  invoker: { read: false, change: false, call: true, status: false },
  viewer: { read: true, change: false, call: false, status: true },
};

const state = {
  me: null,          // {name, role, functions} of the credentials
  can: RIGHTS.viewer,
  names: [],         // the functions the list shows
  listed: false,     // whether the list has been read once
  selected: null,    // the name of the function in the detail pane
  info: null,        // its description (GET /admin/functions/<name>)
  code: null,        // the files of a live version: {name, version, files: [{path, size, text}]}
  calls: [],         // its newest calls, oldest first
  history: [],       // /admin/status samples, oldest first
  stopped: null,     // why the page asks nothing more (signed out, blocked), once it is so
};
const timers = new Map();  // poll task -> the timer of its next run (see every()), so that stop() ends them all

/** `/ui?poll=SECONDS` polls at another period than the defaults (the tests use it): a number within [0.25, 60]. */
function pollOverride() {
  const text = new URLSearchParams(location.search).get("poll");
  const value = Number(text);
  return text && Number.isFinite(value) && value > 0 ? Math.min(60, Math.max(0.25, value)) : null;
}

// -- api --------------------------------------------------------------------------------------------------

/** What api() throws once the server has refused the page's credentials or address: its message says so. */
class Stopped extends Error {}

/** One request: {status, ok, headers, body} where body is the parsed JSON (or the text of another answer).
 *  A 4xx or 5xx is an answer like any other. A network failure throws an Error saying so, and so does the
 *  server's refusal of the credentials or the address (`Stopped`), after which no request is made any more. */
async function api(method, path, body, contentType) {
  if (state.stopped) throw new Stopped(state.stopped);
  const init = { method, credentials: "same-origin", cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.body = body instanceof FormData || typeof body === "string" ? body : JSON.stringify(body);
    if (contentType) init.headers["Content-Type"] = contentType;
    else if (!(body instanceof FormData) && typeof body !== "string") init.headers["Content-Type"] = "application/json";
  }
  let response, text;
  try {
    response = await fetch(path, init);
    text = await response.text();
  } catch (error) {
    throw new Error(`no answer from the server (${error.message})`);
  }
  const isJson = (response.headers.get("Content-Type") || "").startsWith("application/json");
  const reply = { status: response.status, ok: response.ok, headers: response.headers,
                  body: isJson ? parseJson(text) : text };
  if (refusesUs(reply)) throw new Stopped(stop(reply));
  return reply;
}

/** The server refusing the credentials (401) or this address (429 after too many failed logins); not a
 *  function's own answer (each answer of /function/... carries X-Call-Id) nor a busy function's 429. */
function refusesUs(reply) {
  if (reply.headers.has("X-Call-Id")) return false;
  return reply.status === 401 || (reply.status === 429 && problemCode(reply) === "too_many_failed_logins");
}

/** Ask nothing more: every poll's timer ends and api() refuses from now on; the banner says why. */
function stop(reply) {
  const wait = reply.headers.get("Retry-After");
  state.stopped = reply.status === 401 ? "Signed out: reload to log in again."
    : `Blocked for ${/^\d+$/.test(wait || "") ? `${wait} s` : "a while"} after too many failed logins from this `
      + "address: reload after that.";
  for (const timer of timers.values()) clearTimeout(timer);
  timers.clear();
  const banner = $("#stopped");
  banner.textContent = state.stopped;
  banner.hidden = false;
  return state.stopped;
}

function parseJson(text) {
  try { return JSON.parse(text); } catch { return text; }
}

const functionPath = (name) => `/admin/functions/${encodeURIComponent(name)}`;
const logsPath = (name, limit) => `/admin/logs/${encodeURIComponent(name)}?limit=${limit}`;

const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;  // deploy.py's NAME_PATTERN
const DOT_SEGMENT = /^(?:\.|%2e){1,2}$/i;        // what a browser resolves as '.' or '..' (WHATWG URL)
const NOT_IN_A_QUERY = /%(?![0-9A-Fa-f]{2})|[^\w\-.~!$&'()*+,;=:@/?%]/gu;  // '#', spaces, a stray '%', non-ASCII

/** The URL of a call of `name`; `typed` is an http call's path and query as the user wrote them. Each path
 *  segment is sent as written (percent-encoded: '#' is a character, not a fragment), the query as written with
 *  only what a query may not hold encoded. '.' and '..' segments are refused rather than left to the browser,
 *  which would resolve them out of /function/<name>/ (a DELETE of ../../admin/functions/x deleted x).
 *  Throws an Error whose message is for the user. */
function functionUrl(name, typed = "") {
  if (!NAME.test(name)) throw new Error(`"${name}" is not a function name`);
  const base = `/function/${name}`;
  const at = typed.indexOf("?");
  const [path, query] = at < 0 ? [typed, null] : [typed.slice(0, at), typed.slice(at + 1)];
  const segments = path.replace(/^\//, "").split("/");
  if (segments.some((segment) => DOT_SEGMENT.test(segment))) {
    throw new Error("a path segment may not be '.' or '..': the path stays under the function");
  }
  let url = path ? `${base}/${segments.map(encodeURIComponent).join("/")}` : base;
  if (query !== null) url += `?${query.replace(NOT_IN_A_QUERY, encodeURIComponent)}`;
  const resolved = new URL(url, location.href).pathname;  // the last word: where the browser will really go
  if (resolved !== base && !resolved.startsWith(`${base}/`)) throw new Error(`the path leaves ${base}/`);
  return url;
}

/** A sentence for a failed answer: the error's code and message, and the fields that help (the line, when the
 *  message does not name it already; pip's output). */
function problem(reply) {
  const error = reply.body && reply.body.error;
  if (!error || typeof error !== "object") return `${reply.status}: ${String(reply.body).slice(0, 300)}`;
  const where = error.line && !String(error.message).includes(`line ${error.line}`) ? ` (line ${error.line})` : "";
  const pip = error.pip_output ? `\n${error.pip_output}` : "";
  return `${reply.status} ${error.code || error.type || "error"}: ${error.message}${where}${pip}`;
}

/** Whether an answer says the function does not exist (any more). */
const isGone = (reply) => reply.status === 404 && problemCode(reply) === "function_not_found";
const problemCode = (reply) => reply.body && reply.body.error && reply.body.error.code;

// -- render helpers -----------------------------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

/** An element with attributes and children; string children become text nodes (never markup). */
function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** The same for SVG elements, which live in their own namespace. */
function s(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttributes(node, attributes);
  node.append(...children);
  return node;
}

function setAttributes(node, attributes) {
  for (const [key, value] of Object.entries(attributes)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
}

const badge = (text, kind) => h("span", { class: `badge ${kind}` }, text);

/** A one-line message at the bottom of the page, e.g. "deployed resize (version 2)". */
function say(text, kind = "info") {
  const message = $("#message");
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { message.hidden = true; }, kind === "error" ? 12000 : 5000);
}

function outcome(node, text, ok) {
  node.textContent = text;
  node.className = `outcome ${ok ? "ok" : "error"}`;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? `${(value * 1000).toFixed(value < 0.01 ? 2 : 1)} ms` : `${value.toFixed(2)} s`;
}

function ago(unixSeconds) {
  const age = Date.now() / 1000 - unixSeconds;
  if (age < 60) return `${Math.max(0, Math.round(age))} s ago`;
  if (age < 3600) return `${Math.round(age / 60)} min ago`;
  if (age < 86400) return `${Math.round(age / 3600)} h ago`;
  return new Date(unixSeconds * 1000).toLocaleDateString();
}

const clock = (unixSeconds) => new Date(unixSeconds * 1000).toLocaleTimeString();
const date = (unixSeconds) => new Date(unixSeconds * 1000).toLocaleString();

/** A value shown to a person: a string as it is, anything else as indented JSON. */
function shown(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;

function short(value, length = 60) {
  const text = value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value);
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

/** A user's action as an event handler: whatever it throws (no answer from the server, a value the form
 *  refuses) is shown in `box`, the action's own outcome line (the message line when null), and never escapes
 *  as an unhandled rejection. */
function guarded(box, task) {
  return async (...args) => {
    try {
      await task(...args);
    } catch (error) {
      if (box) outcome($(box), error.message, false);
      else say(error.message, "error");
    }
  };
}

// -- views: who, the list, the detail pane ------------------------------------------------------------------

async function start() {
  const opened = new URL(document.URL);  // (location.href hides them; fetch refuses every URL of such a page)
  if (opened.username || opened.password) {
    $("#welcome").textContent = "Open /ui without credentials in the URL: the browser asks for them.";
    return;
  }
  const me = await api("GET", "/admin/me");
  if (!me.ok) { $("#welcome").textContent = problem(me); return; }
  state.me = me.body;
  state.can = RIGHTS[me.body.role] || RIGHTS.viewer;
  $("#me").append(h("strong", {}, me.body.name), " ", badge(me.body.role, "role"));
  wire();
  if (state.can.status) startStatus();
  if (state.can.read) {
    $("#sidebar").hidden = false;
    $("#show-deploy").hidden = !state.can.change;
    $("#welcome").textContent = "Select a function, or deploy one.";
    every(LIST_SECONDS, refreshSelection, 0);  // its first run now: a failure of it still leaves the next ones
  } else if (state.can.call) {
    showInvokerBox();
  } else {
    $("#welcome").textContent = "This user may not use the dashboard's functions.";
  }
}

function wire() {
  $("#show-deploy").addEventListener("click", showDeployForm);
  $("#cancel-deploy").addEventListener("click", () => { $("#deploy-form").hidden = true; showPane(); });
  const deployForm = $("#deploy-form");
  deployForm.addEventListener("submit", guarded("#deploy-result", deploy));
  deployForm.elements.name.addEventListener("input", fillFromLive);
  for (const field of liveFields(deployForm)) {
    field.addEventListener("input", () => { delete field.dataset.before; field.dataset.chosen = "yes"; });
  }
  $("#invoke-form").addEventListener("submit", guarded("#invoke-problem", invoke));
  $("#invoke-form").elements.calling.addEventListener("change", () => showConvention(invokeTarget().calling));
  $("#patch-form").addEventListener("submit", guarded("#patch-result", patch));
  $("#patch-form").elements.key.addEventListener("change", showSettingHint);
  showSettingHint();
  $("#delete").addEventListener("click", () => confirmDelete(true));
  $("#delete-no").addEventListener("click", () => confirmDelete(false));
  $("#delete-yes").addEventListener("click", guarded("#delete-result", remove));
  $("#code-file").addEventListener("change", showFile);
}

/** The list: each function with its status, calls, errors and last call (its newest log record). */
async function refreshList() {
  const reply = await api("GET", "/admin/functions");
  if (!reply.ok) { say(problem(reply), "error"); return; }
  state.names = reply.body;
  state.listed = true;
  const rows = await Promise.all(reply.body.map(summary));
  const list = $("#function-list");
  list.replaceChildren(...rows.filter((row) => row.info).map(listItem));
  $("#list-empty").hidden = list.children.length > 0;
}

async function summary(name) {
  const [info, last] = await Promise.all([api("GET", functionPath(name)), api("GET", logsPath(name, 1))]);
  return { name, info: info.ok ? info.body : null, last: last.ok && last.body.length ? last.body[0] : null };
}

function listItem({ name, info, last }) {
  const counts = `${plural(info.invocations, "call")} · ${plural(info.errors, "error")}`;
  const lastCall = last ? h("span", { class: `last ${last.status}` }, `${last.status} ${ago(last.start)}`)
                        : h("span", { class: "last" }, "never called");
  const button = h("button", { type: "button", class: "function", "data-name": name,
                               onclick: guarded(null, () => select(name)) },
    h("span", { class: `dot ${info.status}`, title: info.status }),
    h("span", { class: "name" }, name),
    h("span", { class: `counts${info.errors ? " has-errors" : ""}` }, counts),
    lastCall);
  return h("li", { class: name === state.selected ? "selected" : "" }, button);
}

function showPane() {
  $("#welcome").hidden = !$("#detail").hidden || !$("#deploy-form").hidden;
}

/** Leave the detail pane of a function that is gone; `note`, in the welcome's place, says so. */
function closeDetail(note) {
  state.selected = null;
  markSelected();
  $("#detail").hidden = true;
  $("#welcome").textContent = note;
  showPane();
}

const GONE_ELSEWHERE = (name) => `${name} no longer exists: it was deleted elsewhere.`;

/** Show `name` in the detail pane (shown first, so that charts drawn into it know their width). */
async function select(name) {
  state.selected = name;
  markSelected();
  $("#deploy-form").hidden = true;
  $("#invoke-answer").hidden = true;
  $("#call-detail").hidden = true;
  for (const box of ["#invoke-problem", "#patch-result", "#versions-result", "#delete-result", "#code-text"]) {
    $(box).textContent = "";
  }
  state.code = null;
  confirmDelete(false);
  $("#detail").hidden = false;
  showPane();
  await Promise.all([loadInfo(name), loadVersions(name), loadCalls(name)]);
}

function markSelected() {
  for (const item of document.querySelectorAll("#function-list li")) {
    item.className = item.firstChild.dataset.name === state.selected ? "selected" : "";
  }
}

/** The detail's header, settings and code, and the invoke box's shape (its calling convention). */
async function loadInfo(name) {
  const reply = await api("GET", functionPath(name));
  if (state.selected !== name) return;
  if (isGone(reply)) { closeDetail(GONE_ELSEWHERE(name)); return; }
  if (!reply.ok) { say(problem(reply), "error"); return; }
  const info = state.info = reply.body;
  $("#detail-name").textContent = name;
  $("#detail-badges").replaceChildren(badge(info.status, info.status), badge(`v${info.version}`, "version"),
    badge(info.calling, "calling"));
  $("#delete-box").hidden = !state.can.change;
  $("#card-invoke").hidden = !state.can.call;
  $("#card-settings").hidden = $("#card-code").hidden = false;
  $("#patch-form").hidden = !state.can.change;
  pairs($("#settings"), [
    ["calling", info.calling], ["timeout", `${info.timeout} s`], ["memory_mb", info.memory_mb],
    ["max_workers", info.max_workers], ["schedule", info.schedule || "none"],
    ["next run", info.next_run || "–"],
    ["env", Object.entries(info.env).map(([key, value]) => `${key}=${value}`).join("\n") || "none"],
    ["secrets", info.secrets.join(", ") || "none"],
  ], "setting");
  pairs($("#code"), [
    ["sha256", info.code_sha256], ["size", `${info.code_size} bytes`], ["files", info.files],
    ["requirements", info.requirements.join("\n") || "none"], ["created", date(info.created)],
    ["updated", date(info.updated)], ["calls kept", `${info.invocations} (${plural(info.errors, "error")})`],
  ], "code");
  showConvention(info.calling);
  await loadCode(name, info.version);
}

/** The live version's files in the Code card, read when a function is selected and again only when its live
 *  version changed (a deploy, a PATCH, a rollback); one file at a time, chosen with a picker when several. */
async function loadCode(name, version) {
  if (state.code && state.code.name === name && state.code.version === version) return;
  const reply = await api("GET", `${functionPath(name)}/code`);
  if (state.selected !== name || !reply.ok) return;
  const picker = $("#code-file");
  const shownBefore = state.code && state.code.name === name ? picker.selectedOptions[0].dataset.path : "func.py";
  state.code = reply.body;
  picker.replaceChildren(...state.code.files.map((file, index) =>
    h("option", { value: index, "data-path": file.path }, `${file.path} (${plural(file.size, "byte")})`)));
  const again = state.code.files.findIndex((file) => file.path === shownBefore);
  picker.value = String(Math.max(0, again));
  $("#code-picker").hidden = state.code.files.length < 2;
  showFile();
}

/** The chosen file's text, as text; a binary or large file (the server sends no text for it) by its size. */
function showFile() {
  const file = state.code.files[Number($("#code-file").value)];
  $("#code-text").textContent = file.text ?? `(binary or large: ${plural(file.size, "byte")})`;
}

/** A two-column table of (label, value); each value cell gets the id `<prefix>-<label>`. */
function pairs(table, rows, prefix) {
  table.tBodies[0].replaceChildren(...rows.map(([label, value]) =>
    h("tr", {}, h("th", {}, label), h("td", { id: `${prefix}-${label.replace(/\W+/g, "_")}` }, String(value)))));
}

async function loadVersions(name) {
  const card = $("#card-versions");
  const reply = await api("GET", `${functionPath(name)}/versions`);
  if (state.selected !== name || !reply.ok) return;
  card.hidden = false;
  $("#versions").tBodies[0].replaceChildren(...reply.body.map((version) => h("tr", { class: version.live ? "live" : "" },
    h("td", {}, `v${version.version}`), h("td", {}, date(version.created)), h("td", {}, version.calling),
    h("td", { class: "mono", title: version.code_sha256 }, version.code_sha256.slice(0, 12)),
    h("td", {}, version.live ? badge("live", "ok")
      : state.can.change ? h("button", { type: "button", "data-version": version.version,
                                         onclick: guarded("#versions-result", () => rollback(name, version.version)) },
                                       "Roll back to this")
        : ""))));
}

/** The newest calls: a chart of their durations and a table; returns the record of `callId` when given. */
async function loadCalls(name, callId) {
  const reply = await api("GET", logsPath(name, CALLS_SHOWN));
  if (state.selected !== name) return null;
  if (isGone(reply)) { closeDetail(GONE_ELSEWHERE(name)); return null; }
  if (!reply.ok) return null;
  state.calls = reply.body;
  $("#card-calls").hidden = false;
  $("#calls-count").textContent = `(newest ${state.calls.length})`;
  durationChart($("#duration-chart"), state.calls);
  $("#calls").tBodies[0].replaceChildren(...state.calls.slice().reverse().map(callRow));
  return callId ? state.calls.find((record) => record.id === callId) || null : null;
}

// What a record did not keep is marked, never shown as `null` or cut silently: past 64 KiB a record holds no
// value for an input, a result, an error or an http body, but `<key>_truncated` and `<key>_bytes` (protocol.py,
// calls.py, conventions.py); past OUTPUT_CAP characters, stdout and stderr are cut and flagged (_worker.py).
const OUTPUT_CAP = 65536;
const cut = (bytes) => `(truncated, ${plural(bytes, "byte")})`;

/** `holder[key]`, or the marker of what the record did not keep of it. */
const kept = (holder, key) => (holder[`${key}_truncated`] ? cut(holder[`${key}_bytes`]) : holder[key]);

function callInput(record) {
  if (record.input_truncated) return cut(record.input_bytes);
  if ("event" in record) return record.event;
  if ("request" in record) return { ...record.request, body: kept(record.request, "body") };
  return Object.keys(record.kwargs || {}).length ? { args: record.args, kwargs: record.kwargs } : record.args;
}

function callAnswer(record) {
  if (record.status !== "ok") {
    if (record.error_truncated) return cut(record.error_bytes);
    return record.error && `${record.error.type}: ${record.error.message}`;
  }
  return "response" in record ? kept(record.response, "body") : kept(record, "result");
}

/** stdout or stderr, and a line saying so when the worker cut it. */
const printed = (text, truncated) =>
  (truncated ? `${text}\n(truncated: the first ${OUTPUT_CAP} characters are kept)` : text);

function callRow(record) {
  const [input, answer] = [callInput(record), callAnswer(record)];
  const row = h("tr", { class: `call ${record.status}`, "data-id": record.id, tabindex: 0 },
    h("td", { title: date(record.start) }, clock(record.start)), h("td", {}, badge(record.status, record.status)),
    h("td", { class: "number" }, seconds(record.duration)), h("td", {}, record.trigger || ""),
    h("td", { class: "mono" }, short(input)), h("td", { class: "mono" }, short(answer)));
  row.addEventListener("click", () => showCall(record));
  return row;
}

function showCall(record) {
  const detail = $("#call-detail");
  detail.textContent = JSON.stringify(record, null, 2);
  detail.hidden = false;
}

/** Every few seconds: the list (new calls, schedules) and the selected function's calls; a background tab asks
 *  nothing once it has its first list. */
async function refreshSelection() {
  if (document.hidden && state.listed) return;
  await refreshList();
  if (state.selected) await loadCalls(state.selected);
}

// -- views: deploy, invoke, change, roll back, delete -------------------------------------------------------
//
// An action remembers the function it was made for: its answer can come after the user has selected another
// one, and then it is said in the message line (naming the function), never shown in the other one's pane.

function showDeployForm() {
  state.selected = null;
  markSelected();
  $("#detail").hidden = true;
  const form = $("#deploy-form");
  form.hidden = false;
  $("#deploy-result").textContent = "";
  showPane();
  form.elements.name.focus();
}

let liveFilling = Promise.resolve();  // the description the deploy form is being filled from, if any

/** A deploy of an existing name replaces it, and the upload's own fields are all the new version gets: no
 *  requirements means none. So the form is filled in from the live version (requirements, calling convention)
 *  and says so; a field the user typed or chose is never replaced, and what was filled in goes again when the
 *  name changes to another. (The environment needs none of this: an upload without one keeps the live one.) */
function fillFromLive() {
  const form = $("#deploy-form").elements;
  const name = form.name.value.trim();
  for (const field of liveFields($("#deploy-form"))) {
    if ("before" in field.dataset) field.value = field.dataset.before;
    delete field.dataset.before;
  }
  const note = $("#deploy-note");
  note.textContent = "";
  if (!state.names.includes(name)) return;
  liveFilling = api("GET", functionPath(name)).then((reply) => {
    if (!reply.ok || form.name.value.trim() !== name) return;
    const info = reply.body;
    fill(form.requirements, info.requirements.join("\n"));
    fill(form.calling, info.calling);
    note.textContent = `${name} exists (version ${info.version}): this deploy replaces it. Its requirements and `
      + "calling convention are filled in below; edit them to change them.";
  }).catch((error) => { note.textContent = `${name} exists, but its settings could not be read: ${error.message}`; });
}

/** The deploy form's fields that are filled in from a live version. */
const liveFields = (form) => [form.elements.requirements, form.elements.calling];

/** `field` holds `value`, unless the user typed or chose its value; what it held before is kept to go back to. */
function fill(field, value) {
  if (field.dataset.chosen) return;
  field.dataset.before = field.value;
  field.value = value;
}

function resetDeployForm(form) {
  form.reset();
  for (const field of liveFields(form)) {
    delete field.dataset.before;
    delete field.dataset.chosen;
  }
  $("#deploy-note").textContent = "";
}

/** POST /admin/upload with the form as multipart/form-data (once the form is filled in from the live version,
 *  when the name exists). Empty Requirements and Environment are not sent: the new version then has no
 *  requirements (or its archive's requirements.txt) and keeps the live environment, as the server does it. */
async function deploy(event) {
  event.preventDefault();
  const form = event.target;
  await liveFilling;
  const data = new FormData(form);
  for (const field of ["requirements", "env"]) {
    if (!String(data.get(field)).trim()) data.delete(field);
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  button.textContent = "Deploying…";
  try {
    const reply = await api("POST", "/admin/upload", data);
    outcome($("#deploy-result"), reply.ok
      ? `${reply.body.created ? "Deployed" : "Replaced"} ${reply.body.name}: version ${reply.body.version}, ready in ${seconds(reply.body.build_seconds)}`
      : problem(reply), reply.ok);
    if (reply.ok) {
      resetDeployForm(form);
      await refreshList();
      if (!form.hidden) await select(reply.body.name);  // not when the user went on to another function
      say(`deployed ${reply.body.name} (version ${reply.body.version})`);
    }
  } finally {
    button.disabled = false;
    button.textContent = "Deploy";
  }
}

/** An invoker cannot list or describe functions: the box asks for the name and the calling convention. */
function showInvokerBox() {
  $("#welcome").hidden = true;
  $("#detail").hidden = false;
  $("#detail").classList.add("solo");
  $("#detail-name").textContent = "Call a function";
  $("#card-invoke").hidden = false;
  $("#invoke-target").hidden = false;
  const exact = (state.me.functions || []).filter((pattern) => !/[*?[\]]/.test(pattern));
  $("#my-functions").replaceChildren(...exact.map((name) => h("option", { value: name })));
  const field = $("#invoke-form").elements.function;
  field.required = true;
  if (exact.length) field.value = exact[0];
  showConvention("args");
}

function invokeTarget() {
  const form = $("#invoke-form");
  if (!$("#invoke-target").hidden) return { name: form.elements.function.value.trim(), calling: form.elements.calling.value };
  return { name: state.selected, calling: state.info ? state.info.calling : "args" };
}

/** JSON arguments for args and event functions; a method, a path and a body for http ones. */
function showConvention(calling) {
  $("#http-box").hidden = calling !== "http";
  $("#args-box").hidden = calling === "http";
  const args = $("#invoke-form").elements.args;
  args.placeholder = calling === "event" ? '{"any": "JSON value"}' : '[1, 2]  or  {"args": [1], "kwargs": {"b": 2}}';
}

async function invoke(event) {
  event.preventDefault();
  const { name, calling } = invokeTarget();
  const form = event.target.elements;
  $("#invoke-problem").textContent = "";
  const url = functionUrl(name, calling === "http" ? form.path.value.trim() : "");
  let method = "POST", body = form.args.value, type = "application/json";
  if (calling === "http") {
    method = form.method.value;
    body = ["GET", "HEAD"].includes(method) ? undefined : form.body.value;
    type = "text/plain; charset=utf-8";
  }
  const began = performance.now();
  const reply = await api(method, url, body, type);
  const roundTrip = (performance.now() - began) / 1000;
  if ($("#invoke-target").hidden && state.selected !== name) {
    say(`${name} answered ${reply.status} after you left it: its calls show the answer`, reply.ok ? "info" : "error");
    return;
  }
  showAnswer(reply, calling, roundTrip);
  if (state.can.read && state.selected === name) {
    const [record] = await Promise.all([loadCalls(name, reply.headers.get("X-Call-Id")), loadInfo(name)]);
    if (record) showRecord(record);
    await refreshList();
  }
}

/** The answer as it came: status, duration, and the result (or error, or an http function's body). */
function showAnswer(reply, calling, roundTrip) {
  $("#invoke-answer").hidden = false;
  $("#invoke-output-box").hidden = true;
  const status = $("#invoke-status");
  status.textContent = `${reply.status}`;
  status.className = `badge ${reply.ok ? "ok" : reply.status === 504 ? "timeout" : "error"}`;
  const body = reply.body;
  const json = calling !== "http" && body && typeof body === "object";
  const duration = json && typeof body.duration === "number" ? body.duration : null;
  $("#invoke-duration").textContent = duration !== null ? `in ${seconds(duration)}` : `round trip ${seconds(roundTrip)}`;
  let text;
  if (json && "result" in body) text = shown(body.result);
  else if (json && body.error) text = body.error.traceback || problem(reply);
  else text = typeof body === "string" ? body : shown(body);
  $("#invoke-result").textContent = text;
}

/** What the call printed and how long it ran, from its log record (for users who may read logs). */
function showRecord(record) {
  const output = [printed(record.stdout, record.stdout_truncated),
    record.stderr && `stderr:\n${printed(record.stderr, record.stderr_truncated)}`].filter(Boolean).join("\n");
  $("#invoke-output-box").hidden = false;
  $("#invoke-output").textContent = output || "(nothing printed)";
  $("#invoke-duration").textContent = `in ${seconds(record.duration)}`;
}

/** What the Value field of the settings form takes, per setting (its placeholder). */
const SETTING_HINTS = {
  timeout: "seconds; empty: default",   // the server's --timeout, as for a function that never set it
  memory_mb: "MiB; empty: default",
  max_workers: "a count; empty: default",
  calling: "args, event or http",
  schedule: "a cron expression; empty: no schedule",
  env: "KEY=VALUE; KEY alone removes it",
};
const NUMBER_SETTINGS = ["timeout", "memory_mb", "max_workers"];

function showSettingHint() {
  const { key, value } = $("#patch-form").elements;
  value.placeholder = SETTING_HINTS[key.value];
}

/** PATCH one setting: numbers for the limits (empty: back to the server's default), text for calling and
 *  schedule (empty removes the schedule), KEY=VALUE for env (KEY alone removes that variable). */
async function patch(event) {
  event.preventDefault();
  const name = state.selected;
  const { key, value } = event.target.elements;
  const change = { [key.value]: settingValue(key.value, value.value.trim()) };
  const reply = await api("PATCH", functionPath(name), change);
  const said = reply.ok ? `${key.value} changed: version ${reply.body.version} is live` : problem(reply);
  if (state.selected !== name) { say(`${name}: ${said}`, reply.ok ? "info" : "error"); return; }
  outcome($("#patch-result"), said, reply.ok);
  if (reply.ok) {
    value.value = "";
    await Promise.all([loadInfo(name), loadVersions(name)]);
  }
}

/** The JSON value of a setting as typed; throws an Error for the user when it is not one. */
function settingValue(key, text) {
  if (NUMBER_SETTINGS.includes(key)) {
    if (text === "") return null;  // the server's default, as the placeholder says
    const number = Number(text);
    if (!Number.isFinite(number)) throw new Error(`${key} must be a number (empty: the server's default)`);
    return number;
  }
  if (key === "schedule") return text === "" ? null : text;
  if (key === "env") {
    const at = text.indexOf("=");
    return at < 0 ? { [text]: null } : { [text.slice(0, at).trim()]: text.slice(at + 1) };
  }
  return text;
}

async function rollback(name, version) {
  const reply = await api("POST", `${functionPath(name)}/rollback`, { version });
  if (!reply.ok) throw new Error(problem(reply));
  say(`${name}: version ${reply.body.version} is live again`);
  await Promise.all([loadInfo(name), loadVersions(name)]);
}

function confirmDelete(asking) {
  $("#delete").hidden = asking;
  $("#delete-confirm").hidden = !asking;
}

async function remove() {
  const name = state.selected;
  const reply = await api("DELETE", functionPath(name));
  if (!reply.ok) throw new Error(problem(reply));
  if (state.selected === name) closeDetail(`Deleted ${name}. Select a function, or deploy one.`);
  say(`deleted ${name}`);
  await refreshList();
}

// -- charts: inline SVG built with DOM calls ----------------------------------------------------------------

/** Empty `svg` and give it a coordinate system of its size on screen (its height is set in style.css), so
 *  one unit is one pixel and labels are drawn at their font size; returns [width, height]. */
function canvas(svg) {
  const box = svg.getBoundingClientRect();
  const [width, height] = [Math.round(box.width) || 600, Math.round(box.height) || 90];
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren(s("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
  return [width, height];
}

/** One bar per call, oldest on the left, its height the call's duration, its colour its status. */
function durationChart(svg, records) {
  const [width, height] = canvas(svg);
  const top = 16;  // room for the label
  const longest = Math.max(...records.map((record) => record.duration || 0), 1e-6);
  const slot = width / Math.max(records.length, 12);  // a few calls still make a readable chart
  records.forEach((record, index) => {
    const barHeight = Math.max(1, ((record.duration || 0) / longest) * (height - top));
    svg.append(s("rect", { x: index * slot + 1, y: height - barHeight, width: slot - 2, height: barHeight,
                           class: `bar ${record.status}` },
      s("title", {}, `${clock(record.start)} ${record.status} ${seconds(record.duration)}`)));
  });
  svg.append(s("text", { x: width - 2, y: 10, class: "label end" }, records.length ? `longest ${seconds(longest)}` : "no calls yet"));
}

/** Lines over the status samples so far (at most HISTORY), oldest on the left: `series` are
 *  [className, value of a sample]. */
function lineChart(svg, series, unit) {
  const [width, height] = canvas(svg);
  const top = 12;
  const samples = state.history;
  const highest = Math.max(1, ...samples.flatMap((sample) => series.map(([, value]) => value(sample))));
  const x = (index) => index * (width / Math.max(1, samples.length - 1));
  const y = (value) => height - 1 - (value / highest) * (height - top - 1);
  for (const [className, value] of series) {
    const points = samples.map((sample, index) => `${x(index).toFixed(1)},${y(value(sample)).toFixed(1)}`);
    svg.append(s("polyline", { points: points.join(" "), class: `line ${className}` }));
  }
  svg.append(s("text", { x: 2, y: 9, class: "label" }, `${Math.round(highest)} ${unit}`));
}

// -- polling: live server status ----------------------------------------------------------------------------

function startStatus() {
  $("#server-status").hidden = false;
  every(STATUS_SECONDS, pollStatus, 0);
}

async function pollStatus() {
  if (document.hidden && state.history.length) return;  // a background tab asks nothing
  const reply = await api("GET", "/admin/status");
  if (!reply.ok) return;
  state.history.push(reply.body);
  if (state.history.length > HISTORY) state.history.shift();
  const { process, workers } = reply.body;
  $("#cpu-now").textContent = `${process.cpu_millicores + workers.cpu_millicores} m`;
  $("#memory-now").textContent = `${Math.round(process.memory_mb + workers.memory_mb)} MB`;
  $("#worker-count").textContent = `· ${plural(workers.count, "warm worker")}`;
  lineChart($("#cpu-chart"), [["server", (x) => x.process.cpu_millicores], ["workers", (x) => x.workers.cpu_millicores]], "m");
  lineChart($("#memory-chart"), [["server", (x) => x.process.memory_mb], ["workers", (x) => x.workers.memory_mb]], "MB");
}

/** Run `task` every `period` seconds, the first time after `first` seconds, each run after the previous one
 *  has ended (never two at once). */
function every(period, task, first = period) {
  const run = async () => {
    try { await task(); } catch (error) { if (!(error instanceof Stopped)) say(`lost the server: ${error.message}`, "error"); }
    if (!state.stopped) timers.set(task, setTimeout(run, period * 1000));
  };
  timers.set(task, setTimeout(run, first * 1000));
}

start().catch((error) => { $("#welcome").textContent = `The dashboard could not start: ${error.message}`; });
