// streamd dashboard: /stream (Server-Sent Events) for new messages, /stats every few seconds for the rest,
// and the analyzer's one-minute windows (/aggregates) for the per-minute table.
//
// Each /stream response lasts api.stream_seconds; EventSource then reconnects by itself and sends the id
// of the last event it got (Last-Event-ID), so the feed resumes where it left off. When a worker has no
// free feed (503), EventSource gives up: the page then polls /messages and tries the feed again later.
"use strict";

const KEEP = 50;                 // messages shown
const STATS_EVERY_MS = 2000;
const POLL_EVERY_MS = 2000;      // /messages, only while the live feed is refused
const FEED_RETRY_MS = 10000;     // after a refused feed
const CHART_SPAN_MS = 5 * 60 * 1000;  // the chart's width once the page has been open that long
const CHART_MIN_SPAN_MS = 60 * 1000;
const AGGREGATES_EVERY_MS = 5000;
const MINUTES_SHOWN = 10;

const $ = (id) => document.getElementById(id);
const numbers = new Intl.NumberFormat();
const rateFormats = [new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 }), new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 })];
const rates = { format: (value) => rateFormats[value < 1 ? 0 : 1].format(value) };  // 0.04/s must not read as 0

const state = {
  source: "",
  messages: new Map(),   // id -> message, at most KEEP
  feed: null,
  pollTimer: null,
  feedTimer: null,
  samples: [],           // [{at: ms, stored: n}] from /stats, for the throughput chart
};

// --- connection status --------------------------------------------------------------------------

function setConnection(kind, text) {
  const element = $("connection");
  if (element.dataset.state !== kind || element.textContent !== text) {
    element.dataset.state = kind;
    element.textContent = text;
  }
}

// --- messages -----------------------------------------------------------------------------------

function newestFirst(a, b) {
  if (a.timestamp !== b.timestamp) return a.timestamp < b.timestamp ? 1 : -1;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

function addMessages(incoming) {
  const fresh = new Set();
  for (const message of incoming) {
    if (state.source && message.source !== state.source) continue;
    if (!state.messages.has(message.id)) fresh.add(message.id);
    state.messages.set(message.id, message);
  }
  if (fresh.size === 0) return;
  const kept = [...state.messages.values()].sort(newestFirst).slice(0, KEEP);
  state.messages = new Map(kept.map((m) => [m.id, m]));
  renderMessages(fresh);
}

function clockTime(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "–";
}

function renderMessages(fresh) {
  const list = $("messages");
  const focusedId = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.id : null;
  const items = [];
  for (const message of state.messages.values()) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = fresh.has(message.id) ? "message fresh" : "message";
    button.dataset.id = message.id;
    button.dataset.source = message.source ?? "";
    const time = document.createElement("time");
    time.dateTime = message.timestamp ?? "";
    time.textContent = clockTime(message.timestamp);
    const source = document.createElement("span");
    source.className = "source";
    source.textContent = message.source ?? "(no source)";
    const content = document.createElement("span");
    content.className = "content";
    content.textContent = message.content ?? "";
    button.append(time, source, content);
    button.setAttribute("aria-label", `${time.textContent}, ${source.textContent}: ${content.textContent}`);
    item.append(button);
    items.push(item);
  }
  list.replaceChildren(...items);
  $("messages-empty").hidden = items.length > 0;
  if (focusedId) {
    const again = list.querySelector(`button[data-id="${CSS.escape(focusedId)}"]`);
    if (again) again.focus();
  }
}

function clearMessages() {
  state.messages.clear();
  $("messages").replaceChildren();
  $("messages-empty").hidden = false;
}

// --- live feed, and polling while it is refused ---------------------------------------------------

function openFeed() {
  closeFeed();
  const query = state.source ? `?source=${encodeURIComponent(state.source)}` : "";
  const feed = new EventSource(`/stream${query}`);
  state.feed = feed;
  feed.onopen = () => {
    stopPolling();
    setConnection("live", "Live");
  };
  feed.onmessage = (event) => addMessages([JSON.parse(event.data)]);
  feed.onerror = () => {
    if (feed !== state.feed) return;
    if (feed.readyState === EventSource.CLOSED) {
      // Refused (busy worker, store down) rather than ended: poll, and ask for a feed again later.
      state.feed = null;
      startPolling();
      state.feedTimer = setTimeout(openFeed, FEED_RETRY_MS);
    }
    // CONNECTING: the response ended as planned and EventSource is already reconnecting.
  };
}

function closeFeed() {
  clearTimeout(state.feedTimer);
  if (state.feed) {
    state.feed.close();
    state.feed = null;
  }
}

async function pollOnce() {
  const query = new URLSearchParams({ limit: String(KEEP) });
  if (state.source) query.set("source", state.source);
  try {
    const response = await fetch(`/messages?${query}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const page = await response.json();
    addMessages(page.data);
    setConnection("polling", "Polling (live feed busy)");
  } catch (error) {
    setConnection("offline", "API unreachable");
  }
}

function startPolling() {
  if (state.pollTimer) return;
  pollOnce();
  state.pollTimer = setInterval(pollOnce, POLL_EVERY_MS);
}

function stopPolling() {
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

// --- /stats -------------------------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderFigures(stats) {
  $("total").textContent = stats.totals ? numbers.format(stats.totals.messages) : "–";
  for (const window of ["1m", "5m", "15m"]) {
    $(`rate-${window}`).textContent = stats.rates ? rates.format(stats.rates[window]) : "–";
  }
  $("lag-total").textContent = stats.lag ? numbers.format(stats.lag.total) : "–";
  const dead = stats.dead_letters;
  $("dead-letters").textContent = dead.messages === null ? "–" : numbers.format(dead.messages);
  const reasons = Object.entries(dead.since_start).filter(([, count]) => count > 0);
  $("dead-letter-reasons").textContent = reasons.length
    ? "since start: " + reasons.map(([reason, count]) => `${reason} ${numbers.format(count)}`).join(", ")
    : "";
  const errors = Object.entries(stats.errors).map(([part, text]) => `${part}: ${text}`);
  $("stats-errors").hidden = errors.length === 0;
  $("stats-errors").textContent = errors.join(" · ");
}

function renderChildren(children) {
  const rows = children.map((child) => {
    const row = document.createElement("tr");
    const stateCell = cell(child.state, "state");
    stateCell.dataset.state = child.state;
    row.append(cell(child.name), stateCell, cell(child.pid ?? "–", "number"), cell(String(child.restarts), "number"));
    return row;
  });
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const only = cell("No supervisor: this API runs on its own.");
    only.colSpan = 4;
    row.append(only);
    rows.push(row);
  }
  $("children").replaceChildren(...rows);
}

function renderPartitions(lag) {
  const rows = (lag ? lag.partitions : []).map((p) => {
    const row = document.createElement("tr");
    row.append(
      cell(`${p.topic}[${p.partition}]`),
      cell(p.committed === null ? "–" : numbers.format(p.committed), "number"),
      cell(numbers.format(p.end), "number"),
      cell(numbers.format(p.lag), "number"),
    );
    return row;
  });
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const only = cell(lag ? "The topic has no partitions yet." : "Kafka did not answer.");
    only.colSpan = 4;
    row.append(only);
    rows.push(row);
  }
  $("partitions").replaceChildren(...rows);
}

function renderSources(sources) {
  const select = $("source");
  const names = (sources || []).map((s) => s.source).filter((name) => typeof name === "string");
  if (state.source && !names.includes(state.source)) names.push(state.source);
  const wanted = ["", ...names];
  const present = [...select.options].map((o) => o.value);
  if (wanted.length === present.length && wanted.every((v, i) => v === present[i])) return;
  const counts = new Map((sources || []).map((s) => [s.source, s.count]));
  const options = wanted.map((value) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = value === "" ? "All sources" : `${value} (${numbers.format(counts.get(value) ?? 0)})`;
    return option;
  });
  select.replaceChildren(...options);
  select.value = state.source;
}

function renderChart(stats) {
  if (stats.totals) {
    const at = Date.parse(stats.at);
    const last = state.samples[state.samples.length - 1];
    if (!last || at > last.at) state.samples.push({ at, stored: stats.totals.messages });
  }
  const now = state.samples.length ? state.samples[state.samples.length - 1].at : Date.now();
  state.samples = state.samples.filter((s) => s.at >= now - CHART_SPAN_MS - STATS_EVERY_MS);
  // The page only knows the rates it has seen: until it has five minutes of them, the chart spans what it has.
  const first = state.samples.length ? state.samples[0].at : now;
  const span = Math.min(CHART_SPAN_MS, Math.max(CHART_MIN_SPAN_MS, now - first));
  const points = [];
  for (let i = 1; i < state.samples.length; i++) {
    const [a, b] = [state.samples[i - 1], state.samples[i]];
    points.push({ at: b.at, rate: Math.max(0, (b.stored - a.stored) / ((b.at - a.at) / 1000)) });
  }
  const peak = Math.max(1, ...points.map((p) => p.rate));
  const x = (at) => (600 * (at - (now - span))) / span;
  const y = (rate) => 198 - (190 * rate) / peak;
  const line = points.map((p) => `${x(p.at).toFixed(1)},${y(p.rate).toFixed(1)}`).join(" ");
  $("chart-line").setAttribute("points", line);
  $("chart-area").setAttribute(
    "points",
    points.length ? `${x(points[0].at).toFixed(1)},199 ${line} ${x(points[points.length - 1].at).toFixed(1)},199` : "",
  );
  $("chart-max").textContent = `peak ${rates.format(peak)} msg/s`;
  $("chart-start").textContent = span >= CHART_SPAN_MS ? "5 min ago" : `${Math.round(span / 1000)} s ago`;
  const latest = points.length ? points[points.length - 1].rate : null;
  $("chart-desc").textContent =
    latest === null ? "No samples yet." : `Now ${rates.format(latest)} messages per second; peak ${rates.format(peak)}.`;
}

async function refreshStats() {
  try {
    const response = await fetch("/stats", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const stats = await response.json();
    renderFigures(stats);
    renderChildren(stats.children);
    renderPartitions(stats.lag);
    renderSources(stats.sources);
    renderChart(stats);
    if (state.feed && state.feed.readyState === EventSource.OPEN) setConnection("live", "Live");
    const updated = $("updated");
    updated.dateTime = stats.at;
    updated.textContent = clockTime(stats.at);
  } catch (error) {
    setConnection("offline", "API unreachable");
  }
}

// --- messages per minute (the analyzer's 1m windows) ------------------------------------------------

function groupName(group) {
  const values = Object.values(group || {});
  return values.length ? values.map((v) => (v === null ? "(none)" : String(v))).join(" / ") : "all";
}

function onlyRow(text, columns) {
  const row = document.createElement("tr");
  const only = cell(text);
  only.colSpan = columns;
  row.append(only);
  return row;
}

function renderPerMinute(aggregates, problem) {
  const head = $("per-minute-head");
  const body = $("per-minute");
  const groups = [...new Set((aggregates || []).map((a) => groupName(a.group)))].sort();
  const minutes = [...new Set((aggregates || []).map((a) => a.start))].sort().reverse().slice(0, MINUTES_SHOWN);
  const headings = ["Minute", ...groups, "Late"].map((text, index) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = text;
    if (index > 0) th.className = "number";
    return th;
  });
  head.replaceChildren(...headings);
  if (!aggregates || minutes.length === 0) {
    body.replaceChildren(onlyRow(problem || "No windows yet.", headings.length));
    return;
  }
  const byKey = new Map(aggregates.map((a) => [`${a.start}\u0000${groupName(a.group)}`, a]));
  const rows = minutes.map((start) => {
    const row = document.createElement("tr");
    const time = document.createElement("time");
    time.dateTime = start;
    time.textContent = new Date(start).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" });
    const first = document.createElement("td");
    first.append(time);
    row.dataset.start = start;
    row.append(first);
    let late = 0;
    for (const group of groups) {
      const found = byKey.get(`${start}\u0000${group}`);
      late += found ? found.late : 0;
      const count = cell(found ? numbers.format(found.count) : "–", "number");
      count.dataset.group = group;
      row.append(count);
    }
    row.append(cell(numbers.format(late), "number"));
    return row;
  });
  body.replaceChildren(...rows);
}

async function refreshAggregates() {
  try {
    const response = await fetch("/aggregates?window=1m&limit=500", { cache: "no-store" });
    const answer = await response.json();
    if (response.ok) renderPerMinute(answer.aggregates);
    else renderPerMinute(null, answer.description || `HTTP ${response.status}`);
  } catch (error) {
    // The connection status (from /stats) already says when the API is unreachable.
  }
}

// --- detail view --------------------------------------------------------------------------------

let opener = null;

async function showDetail(id) {
  const response = await fetch(`/messages/${encodeURIComponent(id)}`, { cache: "no-store" });
  const message = response.ok ? await response.json() : state.messages.get(id);
  if (!message) return;
  const fields = [
    ["Id", message.id],
    ["Content", message.content],
    ["Source", message.source ?? "(none)"],
    ["Timestamp", message.timestamp],
    ["Stored at", message.ingested_at],
    ["Kafka", message.kafka ? `${message.kafka.topic}[${message.kafka.partition}] @ ${message.kafka.offset}` : "–"],
  ];
  const list = $("detail-fields");
  list.replaceChildren(
    ...fields.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value ?? "–";
      return [dt, dd];
    }),
  );
  $("detail").showModal();
  $("detail-close").focus();
}

// --- wiring -------------------------------------------------------------------------------------

function start() {
  $("messages").addEventListener("click", (event) => {
    const button = event.target.closest("button.message");
    if (!button) return;
    opener = button.dataset.id;
    showDetail(button.dataset.id).catch(() => setConnection("offline", "API unreachable"));
  });
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("close", () => {
    const again = opener && $("messages").querySelector(`button[data-id="${CSS.escape(opener)}"]`);
    if (again) again.focus();
  });
  $("filter").addEventListener("submit", (event) => event.preventDefault());
  $("source").addEventListener("change", (event) => {
    state.source = event.target.value;
    clearMessages();
    stopPolling();
    openFeed();
  });
  openFeed();
  refreshStats();
  setInterval(refreshStats, STATS_EVERY_MS);
  refreshAggregates();
  setInterval(refreshAggregates, AGGREGATES_EVERY_MS);
}

start();
