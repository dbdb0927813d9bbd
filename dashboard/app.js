// The dashboard: asks for the function key once, then polls the API and renders the pool, the
// queue, runs, jobs (filtered, paged), pool changes and cost. Every state is shown as text;
// colour only repeats it. All text from the API goes in through textContent, never as HTML.

import { api, key, operations, poll } from "./api.js";

const PAGE_SIZE = 25;
const MAX_RUNS = 12;
const MAX_CHANGES = 12;
const CHANGES_SEEN = "vmpool.changes";

const $ = (selector) => document.querySelector(selector);
const state = {
  ops: new Set(), page: 0, jobs: [], open: new Set(), poller: null, runIds: [],
};

// A DOM element with attributes and children (strings become text nodes).
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const badge = (value) => h("span", { class: `badge state-${String(value).replace(/[^a-z_-]/gi, "")}` },
  String(value));

function time(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return "—";
  return h("time", { datetime: iso, title: iso }, moment.toLocaleTimeString([], { hour12: false }));
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 60) return `${Math.round(seconds * 10) / 10} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// --- actions ------------------------------------------------------------------------------

async function act(question, path, body, after) {
  if (!window.confirm(question)) return;
  try {
    const result = await api(path, { method: "POST", body });
    if (after) after(result);
    showNotice(`Done: ${question.replace(/\?$/, "")}.`);
  } catch (err) {
    showNotice(err.message, true);
  }
  state.poller?.poke();
}

function showNotice(text, isError = false) {
  const live = $("#live");
  live.dataset.notice = text;
  live.classList.toggle("notice-error", isError);
}

function rememberChange(result) {
  const seen = JSON.parse(sessionStorage.getItem(CHANGES_SEEN) || "[]");
  if (result?.changeId && !seen.includes(result.changeId)) seen.unshift(result.changeId);
  sessionStorage.setItem(CHANGES_SEEN, JSON.stringify(seen.slice(0, MAX_CHANGES)));
}

function poolAction(vm, changeType, label) {
  return h("button", {
    type: "button",
    onclick: () => act(`${label} ${vm}?`, "changes", { changeType, vms: [vm] }, rememberChange),
  }, `${label} ${vm}`);
}

// --- views --------------------------------------------------------------------------------

function renderQueue(pool) {
  const figures = [
    ["Waiting (visible)", pool.queued], ["In flight", pool.inFlight],
    ["Poison", pool.poison ?? "—"],
  ];
  $("#queue").replaceChildren(...figures.flatMap(([label, value]) => [
    h("dt", {}, label),
    h("dd", { class: label === "Poison" && value > 0 ? "bad" : "" }, String(value ?? "—")),
  ]));
}

function renderPool(pool, billed) {
  const vms = pool.vms || [];
  const counts = {};
  for (const vm of vms) counts[vm.state] = (counts[vm.state] || 0) + 1;
  const failed = vms.filter((vm) => vm.state === "failed").map((vm) => vm.name);
  $("#pool-summary").textContent = `${vms.length} VMs (${pool.backend} backend, at most ` +
    `${pool.maxRunning} running): ` +
    Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ") +
    (failed.length ? `. Failed: ${failed.join(", ")}` : "");
  replaceRows($("#pool-table tbody"), vms.map((vm) => {
    const up = ["running", "starting", "draining"].includes(vm.state);
    const actions = h("td", { class: "actions" },
      state.ops.has("POST /api/changes")
        ? (up ? poolAction(vm.name, "pool.stop", "Stop") : poolAction(vm.name, "pool.start", "Start"))
        : "—");
    return h("tr", { dataset: { vm: vm.name, state: vm.state } },
      h("th", { scope: "row" }, vm.name),
      h("td", {}, badge(vm.state)),
      h("td", {}, `${vm.busy} of ${vm.slots}`),
      h("td", {}, vm.agentVersion || "—"),
      h("td", {}, time(vm.stateSince)),
      h("td", {}, vm.bootSeconds ? duration(vm.bootSeconds) : "—"),
      h("td", {}, time(vm.lastHeartbeat)),
      h("td", {}, billed[vm.name] !== undefined ? duration(billed[vm.name]) : "—"),
      h("td", { class: vm.state === "failed" ? "bad" : "" }, vm.reason || ""),
      actions);
  }));
}

function progress(done, total, label) {
  const pct = total ? Math.round((100 * done) / total) : 0;
  return h("div", { class: "progress-line" },
    h("progress", { max: total || 1, value: done, "aria-label": label }),
    h("span", {}, `${done} of ${total} (${pct}%)`));
}

function renderRuns(runs) {
  $("#runs-empty").hidden = runs.length > 0;
  $("#runs").replaceChildren(...runs.map((run) => {
    const summary = run.summary || {};
    const custom = run.orchestration?.customStatus || {};
    const jobs = state.jobs.filter((j) => j.runId === run.runId);
    const finished = jobs.filter((j) => j.status === "succeeded" || j.status === "failed").length;
    const total = summary.files ?? custom.files ?? jobs.length;
    const done = Math.max(finished, (summary.succeeded || 0) + (summary.failed || 0), custom.done || 0);
    const status = summary.status || run.orchestration?.runtimeStatus || "unknown";
    const ok = summary.succeeded ?? jobs.filter((j) => j.status === "succeeded").length;
    const bad = summary.failed ?? jobs.filter((j) => j.status === "failed").length;
    const cancel = state.ops.has("POST /api/runs/{run_id}/cancel") && status !== "completed"
      ? h("button", { type: "button", onclick: () => act(`Cancel run ${run.runId}?`,
        `runs/${encodeURIComponent(run.runId)}/cancel`, {}) }, `Cancel run ${run.runId}`)
      : null;
    return h("li", { class: "run", dataset: { run: run.runId } },
      h("h3", {}, run.runId, " ", badge(String(status).toLowerCase())),
      progress(done, total, `progress of run ${run.runId}`),
      h("p", { class: "summary" }, `${ok} succeeded, ${bad} failed` +
        (summary.bytesIn !== undefined ? `, ${summary.bytesIn} bytes in, ${summary.bytesOut} out` : "") +
        (summary.durationS !== undefined ? `, took ${duration(summary.durationS)}` : "")),
      h("button", { type: "button", onclick: () => { $("#filter-run").value = run.runId; filtersChanged(); } },
        `Show jobs of ${run.runId}`),
      cancel);
  }));
}

function jobSteps(job) {
  const actions = job.actions.length ? job.actions : ["process"];
  return h("ol", { class: "steps" }, actions.map((action, index) => {
    let status = "pending";
    if (job.status === "succeeded" || index < job.step) status = "done";
    else if (index === job.step) status = job.status === "failed" ? "failed" : job.status;
    return h("li", {}, `${action}: `, badge(status));
  }));
}

async function openOutput(job) {
  try {
    const response = await fetch(`jobs/${encodeURIComponent(job.jobId)}/output`, {
      headers: { "x-functions-key": key.get() || "" }, credentials: "omit" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    window.open(url, "_blank", "noopener");
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    showNotice(`could not fetch the output of ${job.jobId}: ${err.message}`, true);
  }
}

function jobDetail(job) {
  const rows = [
    ["Job", job.jobId], ["Run", job.runId || "—"], ["Steps", jobSteps(job)],
    ["Attempts", String(job.attempts)], ["VM", job.vm || "—"],
    ["Created", time(job.createdAt)], ["Started", time(job.startedAt)],
    ["Finished", time(job.finishedAt)], ["Bytes in / out", `${job.bytesIn} / ${job.bytesOut}`],
    ["Output", job.output
      ? (state.ops.has("GET /api/jobs/{job_id}/output")
        ? h("button", { type: "button", onclick: () => openOutput(job) }, `Open ${job.output}`)
        : job.output)
      : "—"],
    ["Error", job.error ? h("pre", { class: "bad" }, job.error) : "—"],
  ];
  const buttons = [];
  if (state.ops.has("POST /api/jobs/{job_id}/cancel") && !["succeeded", "failed"].includes(job.status)) {
    buttons.push(h("button", { type: "button", onclick: () => act(`Cancel job ${job.blob}?`,
      `jobs/${encodeURIComponent(job.jobId)}/cancel`, {}) }, "Cancel job"));
  }
  if (state.ops.has("POST /api/jobs/{job_id}/retry") && job.status === "failed") {
    buttons.push(h("button", { type: "button", onclick: () => act(`Retry job ${job.blob}?`,
      `jobs/${encodeURIComponent(job.jobId)}/retry`, {}) }, "Retry job"));
  }
  return h("tr", { class: "detail", dataset: { detailOf: job.jobId } },
    h("td", { colspan: 9 },
      h("dl", { class: "detail-list" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      buttons));
}

function renderJobs() {
  const jobs = state.jobs;
  const pages = Math.max(1, Math.ceil(jobs.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const shown = jobs.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  const counts = {};
  for (const job of jobs) counts[job.status] = (counts[job.status] || 0) + 1;
  $("#jobs-summary").textContent = `${jobs.length} jobs` + (jobs.length ? ": " : "") +
    Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
  $("#jobs-page").textContent = `Page ${state.page + 1} of ${pages}`;
  $("#jobs-prev").disabled = state.page === 0;
  $("#jobs-next").disabled = state.page >= pages - 1;
  const rows = [];
  for (const job of shown) {
    const open = state.open.has(job.jobId);
    rows.push(h("tr", { dataset: { job: job.jobId, status: job.status } },
      h("th", { scope: "row", class: "blob" }, job.blob,
        job.runId ? h("span", { class: "run-of" }, `run ${job.runId}`) : null),
      h("td", {}, badge(job.status)),
      h("td", {}, job.actions.length ? `${Math.min(job.step + 1, job.actions.length)} of ${job.actions.length}` : "—"),
      h("td", {}, String(job.attempts)),
      h("td", {}, job.vm || "—"),
      h("td", {}, time(job.createdAt)),
      h("td", {}, job.durationMs ? duration(job.durationMs / 1000) : "—"),
      h("td", { class: job.error ? "bad error-cell" : "" }, job.error || ""),
      h("td", {}, h("button", {
        type: "button", "aria-expanded": open ? "true" : "false",
        onclick: () => { if (open) state.open.delete(job.jobId); else state.open.add(job.jobId); renderJobs(); },
      }, open ? "Hide" : "Details"))));
    if (open) rows.push(jobDetail(job));
  }
  replaceRows($("#jobs-table tbody"), rows);
}

function renderRunFilter(runIds) {
  const select = $("#filter-run");
  const current = select.value;
  const wanted = ["", ...runIds];
  if (wanted.join("\n") === [...select.options].map((o) => o.value).join("\n")) return;
  select.replaceChildren(...wanted.map((id) => h("option", { value: id }, id || "all")));
  select.value = wanted.includes(current) ? current : "";
}

function renderChanges(changes) {
  $("#changes-empty").hidden = changes.length > 0;
  $("#changes").replaceChildren(...changes.map((change) => h("li", { class: "change" },
    h("h3", {}, `${change.changeType || change.input?.changeType || "change"} `,
      (change.vms || change.input?.vms || []).join(", "), " ",
      badge(change.status || String(change.runtimeStatus || "unknown").toLowerCase())),
    h("p", { class: "summary" }, `${change.changeId}: ${change.progress || ""} steps done`),
    h("ol", { class: "steps" }, (change.steps || []).map((step) =>
      h("li", {}, `${step.step}${step.vm ? ` (${step.vm})` : ""}: `, badge(step.status),
        step.error ? h("span", { class: "bad" }, ` ${step.error}`) : null))),
    change.error ? h("p", { class: "bad" }, change.error) : null)));
}

function renderCost(cost) {
  if (!cost) return;
  const days = cost.days || cost.perDay || [];
  const runs = cost.runs || cost.perRun || [];
  const table = (title, rows) => h("div", { class: "scroll" }, h("table", {},
    h("caption", {}, title),
    h("thead", {}, h("tr", {}, Object.keys(rows[0] || { none: "" }).map((k) => h("th", { scope: "col" }, k)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, Object.values(row).map((v) => h("td", {}, String(v))))))));
  const parts = [];
  if (cost.billedSeconds !== undefined) parts.push(h("p", { class: "summary" }, `Billed VM time: ${duration(cost.billedSeconds)}`));
  if (days.length) parts.push(table("Per day", days));
  if (runs.length) parts.push(table("Per run", runs));
  if (!parts.length) parts.push(h("pre", {}, JSON.stringify(cost, null, 2)));
  $("#cost").replaceChildren(...parts);
}

// --- refresh ------------------------------------------------------------------------------

function jobsQuery() {
  const params = new URLSearchParams({ limit: "1000" });
  const status = $("#filter-status").value;
  const run = $("#filter-run").value;
  if (status) params.set("status", status);
  if (run) params.set("runId", run);
  return `jobs?${params}`;
}

async function listRuns(jobs) {
  let ids = [];
  if (state.ops.has("GET /api/runs")) {
    const listed = await api("runs?limit=" + MAX_RUNS);
    ids = (listed.runs || []).map((r) => r.runId);
  }
  for (const job of jobs) if (job.runId && !ids.includes(job.runId)) ids.push(job.runId);
  for (const id of state.runIds) if (!ids.includes(id)) ids.push(id);
  state.runIds = ids.slice(0, 50);
  return Promise.all(ids.slice(0, MAX_RUNS).map((id) => api(`runs/${encodeURIComponent(id)}`)
    .catch(() => null))).then((runs) => runs.filter(Boolean));
}

async function listChanges() {
  let ids = JSON.parse(sessionStorage.getItem(CHANGES_SEEN) || "[]");
  if (state.ops.has("GET /api/changes")) {
    const listed = await api("changes?limit=" + MAX_CHANGES);
    ids = [...new Set([...(listed.changes || []).map((c) => c.changeId), ...ids])];
  }
  return Promise.all(ids.slice(0, MAX_CHANGES).map((id) => api(`changes/${encodeURIComponent(id)}`)
    .catch(() => null))).then((changes) => changes.filter(Boolean));
}

async function refresh() {
  const [pool, jobs, cost] = await Promise.all([
    api("pool"), api(jobsQuery()),
    state.ops.has("GET /api/cost") ? api("cost").catch(() => null) : Promise.resolve(null),
  ]);
  state.jobs = jobs.jobs;
  const [runs, changes] = await Promise.all([listRuns(jobs.jobs), listChanges()]);
  const billed = {};
  for (const vm of cost?.vms || []) billed[vm.name || vm.vm] = vm.billedSeconds;
  renderQueue(pool);
  renderPool(pool, billed);
  renderRunFilter(state.runIds);
  renderRuns(runs);
  renderJobs();
  renderChanges(changes);
  renderCost(cost);
}

function onPollState(result) {
  const live = $("#live");
  const notice = live.dataset.notice ? ` — ${live.dataset.notice}` : "";
  if (result.ok) {
    live.className = "live ok";
    live.textContent = `Live: updated ${result.lastOk.toLocaleTimeString([], { hour12: false })}${notice}`;
    $("#views").classList.remove("stale");
    return;
  }
  if (result.refused) {
    disconnect(result.error.message);
    return;
  }
  const since = result.lastOk
    ? `last updated ${result.lastOk.toLocaleTimeString([], { hour12: false })}`
    : "never updated";
  live.className = "live stale";
  live.textContent = `Stale: ${since}; retrying in ${Math.round(result.retryIn / 1000)} s ` +
    `(${result.error.message})`;
  $("#views").classList.add("stale");
}

function disconnect(message) {
  state.poller?.stop();
  state.poller = null;
  key.clear();
  $("#views").hidden = true;
  $("#forget-key").hidden = true;
  $("#key-panel").hidden = false;
  const error = $("#key-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("#live").className = "live refused";
  $("#live").textContent = message ? "Not connected: key refused" : "Not connected";
  $("#key-input").focus();
}

async function connect() {
  $("#key-panel").hidden = true;
  $("#views").hidden = false;
  $("#forget-key").hidden = false;
  $("#live").textContent = "Connecting…";
  state.poller = poll(refresh, onPollState);
}

function filtersChanged() {
  state.page = 0;
  state.poller?.poke();
}

async function main() {
  state.ops = await operations();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    key.set($("#key-input").value.trim());
    $("#key-input").value = "";
    $("#key-error").hidden = true;
    connect();
  });
  $("#forget-key").addEventListener("click", () => disconnect(""));
  $("#filter-status").addEventListener("change", filtersChanged);
  $("#filter-run").addEventListener("change", filtersChanged);
  $("#jobs-prev").addEventListener("click", () => { state.page -= 1; renderJobs(); });
  $("#jobs-next").addEventListener("click", () => { state.page += 1; renderJobs(); });
  if (key.get()) connect();
  else disconnect("");
}

main();
