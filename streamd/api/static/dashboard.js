// streamd dashboard: /stream (Server-Sent Events) for new messages, /stats every few seconds for the rest,
// and the analyzer's one-minute windows (/aggregates) for the per-minute table.
//
// Each /stream response lasts api.stream_seconds; the page then reconnects with the id of the last event it
// got (Last-Event-ID), so the feed resumes where it left off. When a worker has no free feed (503), the page
// polls /messages and tries the feed again later.
//
// API keys: when the API answers 401 or 403, the page asks for a key, keeps it in sessionStorage (this tab
// only, gone when it closes) and sends it as `Authorization: Bearer`. EventSource cannot send a header, and
// a key must never go in a URL (it would land in logs and history), so the feed is read with fetch() and
// parsed here, one code path with or without a key.
"use strict";

const KEEP = 50;                 // messages shown
const STATS_EVERY_MS = 2000;
const POLL_EVERY_MS = 2000;      // /messages, only while the live feed is refused
const FEED_RETRY_MS = 10000;     // after a refused feed
const CHART_SPAN_MS = 5 * 60 * 1000;  // the chart's width once the page has been open that long
const CHART_MIN_SPAN_MS = 60 * 1000;
const AGGREGATES_EVERY_MS = 5000;
const MINUTES_SHOWN = 10;
const KEY_STORAGE = "streamd.apiKey";
const FEED_RECONNECT_MS = 1000;  // until the server's `retry:` says otherwise

const $ = (id) => document.getElementById(id);
const numbers = new Intl.NumberFormat();
const rateFormats = [new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 }), new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 })];
const rates = { format: (value) => rateFormats[value < 1 ? 0 : 1].format(value) };  // 0.04/s must not read as 0

const state = {
  source: "",
  messages: new Map(),   // id -> message, at most KEEP
  feed: null,            // {controller, lastId, open} while a /stream response is wanted
  key: sessionStorage.getItem(KEY_STORAGE) || "",
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

// --- API keys -------------------------------------------------------------------------------------

function authHeaders() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

// Every request of the page goes through here; a 401 or 403 asks for a key and answers null.
async function api(path) {
  const sent = state.key;
  const response = await fetch(path, { cache: "no-store", headers: authHeaders() });
  if (response.status === 401 || response.status === 403) {
    await askForKey(response, sent);
    return null;
  }
  return response;
}

// `sent` is the key the refused request carried: several requests may come back refused at once.
async function askForKey(response, sent) {
  if (state.key && sent !== state.key) return;  // sent before the key now in use was given
  let problem = "";
  try {
    problem = (await response.json()).description || "";
  } catch (error) {
    // not the API's JSON: the status says enough
  }
  if (response.status === 401 && sent) {
    if (state.key === sent) {
      state.key = "";
      sessionStorage.removeItem(KEY_STORAGE);
    }
    problem = `That key was refused: ${problem}`;
  }
  const form = $("key-form");
  $("key-problem").textContent = problem;
  setConnection("locked", response.status === 403 ? "Key lacks a scope" : "API key needed");
  if (form.hidden) {
    form.hidden = false;
    $("api-key").focus();
  }
}

function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  state.key = key;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  $("key-form").hidden = true;
  setConnection("connecting", "Connecting…");
  openFeed();
  refreshStats();
  refreshAggregates();
}

// --- live feed, and polling while it is refused ---------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function openFeed() {
  closeFeed();
  const feed = { controller: new AbortController(), lastId: null, open: false };
  state.feed = feed;
  followFeed(feed);
}

async function followFeed(feed) {
  const query = state.source ? `?source=${encodeURIComponent(state.source)}` : "";
  let reconnectMs = FEED_RECONNECT_MS;
  while (state.feed === feed) {
    const sent = state.key;
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (feed.lastId) headers["Last-Event-ID"] = feed.lastId;
    let response;
    try {
      response = await fetch(`/stream${query}`, { cache: "no-store", headers, signal: feed.controller.signal });
    } catch (error) {
      if (state.feed !== feed) return;  // closed on purpose
      setConnection("offline", "API unreachable");
      await sleep(FEED_RETRY_MS);
      continue;
    }
    if (state.feed !== feed) return;
    if (response.status === 401 || response.status === 403) {
      state.feed = null;  // the key form reopens it
      await askForKey(response, sent);
      return;
    }
    if (!response.ok) {
      // Refused (busy worker, store down): poll, and ask for a feed again later.
      state.feed = null;
      startPolling();
      state.feedTimer = setTimeout(openFeed, FEED_RETRY_MS);
      return;
    }
    feed.open = true;
    stopPolling();
    setConnection("live", "Live");
    try {
      reconnectMs = await readEvents(response.body, feed, reconnectMs);
    } catch (error) {
      if (state.feed !== feed) return;
    }
    // The response ended as planned (api.stream_seconds) or the connection broke: resume after the last event.
    feed.open = false;
    await sleep(reconnectMs);
  }
}

// The Server-Sent Events format as /stream writes it: blocks ended by a blank line, of `id:`, `data:`,
// `retry:` fields and `:` comments. Answers the reconnection delay the server last asked for.
async function readEvents(body, feed, reconnectMs) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done || state.feed !== feed) return reconnectMs;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let data = null;
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon <= 0) continue;  // a comment, or a line without a field
        const field = line.slice(0, colon);
        const text = line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") data = data === null ? text : `${data}\n${text}`;
        else if (field === "id") feed.lastId = text;
        else if (field === "retry" && /^\d+$/.test(text)) reconnectMs = Number(text);
      }
      if (data !== null) addMessages([JSON.parse(data)]);
    }
  }
}

function closeFeed() {
  clearTimeout(state.feedTimer);
  if (state.feed) {
    state.feed.controller.abort();
    state.feed = null;
  }
}

async function pollOnce() {
  const query = new URLSearchParams({ limit: String(KEEP) });
  if (state.source) query.set("source", state.source);
  try {
    const response = await api(`/messages?${query}`);
    if (response === null) {
      stopPolling();  // the key form reopens the feed
      return;
    }
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
    const response = await api("/stats");
    if (response === null) return;
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const stats = await response.json();
    renderFigures(stats);
    renderChildren(stats.children);
    renderPartitions(stats.lag);
    renderSources(stats.sources);
    renderChart(stats);
    if (state.feed && state.feed.open) setConnection("live", "Live");
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
    const response = await api("/aggregates?window=1m&limit=500");
    if (response === null) return;
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
  const response = await api(`/messages/${encodeURIComponent(id)}`);
  const message = response && response.ok ? await response.json() : state.messages.get(id);
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
  $("key-form").addEventListener("submit", useKey);
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
