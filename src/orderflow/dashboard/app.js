// orderflow dashboard: plain JavaScript, no dependencies, no build step. It reads the HTTP API
// of the service that serves it. Whatever the server sends goes into the page as text (append,
// textContent, setAttribute), never as HTML.
"use strict";

const STATUSES = ["pending", "processing", "shipped", "cancelled", "failed"];
const EVENT_TYPES = ["order.submitted", "order.processing", "order.shipped", "order.failed",
  "order.attempt_failed", "order.cancelled", "order.retried", "order.released",
  "order.rescued", "order.deleted"];
const MAX_ROWS = 200;
const BUCKET_MS = 10_000;
const BUCKETS = 30; // five minutes
const TOKEN_KEY = "orderflow.token";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  orders: new Map(), // id → order as the API shows it, or a stub made from its submit event
  filters: { status: "", from: "", to: "" }, // from, to: RFC 3339 with microseconds, like ours
  selected: null,
  shipped: [], // when each order.shipped event seen happened (ms), the last five minutes
  lastSeq: null,
  buffered: null, // events that came while the table was loading, applied once it is loaded
  loads: 0,
};

// -- small helpers -------------------------------------------------------------------------

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (value !== null && value !== false) node.setAttribute(name, String(value));
  }
  node.append(...children.filter((child) => child !== null));
  return node;
}

function svg(tag, attributes, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const dateAndTime = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

function when(at) {
  const date = new Date(at);
  const today = date.toDateString() === new Date().toDateString();
  return h("time", { datetime: at, title: at }, (today ? timeOnly : dateAndTime).format(date));
}

const badge = (status) =>
  h("span", { class: `badge ${status}`, "data-testid": "status-badge" }, status);
const items = (list) => list.map((item) => `${item.name} × ${item.quantity}`).join(", ");
const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
// Ours have microseconds; a browser's have milliseconds. The same precision compares as text.
const micros = (ms) => new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

const timers = {};
function soon(name, work, ms) { // once per `ms` however often asked
  timers[name] ??= setTimeout(() => { timers[name] = null; attempt(work); }, ms);
}

async function attempt(work) {
  try {
    await work();
    showError(null);
  } catch (error) {
    showError(describe(error));
  }
}

function describe(error) {
  if (error instanceof ApiError) {
    return error.status === 403 ? `Your token may not do this: ${error.message}` : error.message;
  }
  if (error.message !== "Failed to fetch") console.error(error); // not the network: a bug
  return "The service does not answer. Trying again…";
}

function showError(message) {
  $("error").hidden = message === null;
  $("error").textContent = message ?? "";
}

// -- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function authorize(headers) {
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  return headers;
}

async function api(method, path, body) {
  for (;;) {
    const init = { method, headers: authorize({ accept: "application/json" }) };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      await askToken(state.token ? "That token was refused: try another." : "");
      continue;
    }
    const json = (response.headers.get("content-type") ?? "").includes("json");
    const data = json ? await response.json() : null;
    if (!response.ok) throw new ApiError(response.status, data?.detail ?? response.statusText);
    return data;
  }
}

let asking = null; // one question at a time, whoever met the 401

function askToken(message) {
  asking ??= new Promise((resolve) => {
    const dialog = $("token-dialog");
    $("token-error").textContent = message;
    $("token-input").value = "";
    const done = () => {
      dialog.close();
      asking = null;
      resolve();
    };
    dialog.onsubmit = (event) => {
      event.preventDefault();
      state.token = $("token-input").value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      $("change-token").hidden = false;
      done();
    };
    dialog.oncancel = (event) => { // Escape: keep the token there is; without one, nothing works
      event.preventDefault();
      if (state.token) done();
    };
    dialog.showModal();
  });
  return asking;
}

// -- events: live updates --------------------------------------------------------------------

let events = null; // the open connection: { ready, close() }

function setLive(live, title) {
  $("live").dataset.state = live ? "live" : "reconnecting";
  $("live").textContent = live ? "Live" : "Reconnecting…";
  $("live").title = title;
}

// EventSource cannot send an Authorization header: with a token, the same stream is read
// through fetch(). Both resume after the last event seen.
function connect() {
  events?.close();
  events = state.token ? streamWithToken() : streamWithEventSource();
  return events.ready;
}

function streamWithEventSource() {
  const source = new EventSource("/events");
  let opened;
  let down = false;
  const ready = new Promise((resolve) => { opened = resolve; });
  source.onopen = () => {
    setLive(true, "Server-Sent Events");
    opened();
    if (down && state.lastSeq === null) attempt(loadOrders); // no id to resume from
  };
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => onEvent(JSON.parse(message.data)));
  }
  source.onerror = () => {
    setLive(false, "");
    opened();
    down = true;
    if (source.readyState === EventSource.CLOSED) setTimeout(start, 2000); // refused: 401, 410
  };
  return { ready, close: () => source.close() };
}

function streamWithToken() {
  const stop = new AbortController();
  let opened;
  const ready = new Promise((resolve) => { opened = resolve; });
  let reload = false; // events were lost: load the table again once connected
  (async () => {
    while (!stop.signal.aborted) {
      try {
        const after = state.lastSeq === null ? "" : `?after=${state.lastSeq}`;
        const headers = authorize({ accept: "text/event-stream" });
        const response = await fetch(`/events${after}`, { headers, signal: stop.signal });
        if (response.status === 401) {
          opened();
          await askToken("That token was refused: try another.");
          continue;
        }
        if (response.status === 410) { // resumed too late: what we missed is no longer kept
          state.lastSeq = null;
          reload = true;
          continue;
        }
        if (!response.ok) throw new ApiError(response.status, response.statusText);
        await readStream(response.body, () => {
          setLive(true, "Server-Sent Events, read with a token");
          opened();
          if (reload) attempt(loadOrders);
          reload = false;
        });
      } catch (error) {
        if (stop.signal.aborted) return;
      }
      setLive(false, "");
      opened();
      await sleep(2000);
    }
  })();
  return { ready, close: () => stop.abort() };
}

async function readStream(body, onFirstChunk) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  for (let first = true; ; first = false) {
    const { value, done } = await reader.read();
    if (done) return;
    if (first) onFirstChunk(); // the server subscribes before it sends anything
    text += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = text.indexOf("\n\n")) >= 0) {
      const data = text.slice(0, end).split("\n").filter((line) => line.startsWith("data:"));
      text = text.slice(end + 2);
      if (data.length) onEvent(JSON.parse(data.map((line) => line.slice(5).trim()).join("\n")));
    }
  }
}

function onEvent(event) {
  state.lastSeq = event.seq;
  if (event.type === "order.shipped") {
    state.shipped.push(Date.parse(event.at));
    drawChart();
  }
  state.buffered?.push(event);
  applyEvent(event);
  soon("stats", refreshStats, 500);
  if (event.order_id === state.selected) soon("detail", refreshDetail, 200);
}

// -- the table of recent orders --------------------------------------------------------------

function matches(order) {
  const { status, from, to } = state.filters;
  return (!status || order.status === status) && (!from || order.timestamp >= from)
    && (!to || order.timestamp < to);
}

function applyEvent(event) {
  const known = state.orders.get(event.order_id);
  if (event.type === "order.deleted") {
    state.orders.delete(event.order_id);
  } else if (known && event.status && event.at >= known.updated_at) {
    known.status = event.status;
    known.updated_at = event.at;
  } else if (!known && event.type === "order.submitted") {
    state.orders.set(event.order_id, { id: event.order_id, status: event.status,
      timestamp: event.at, updated_at: event.at, customer: null, items: null });
    fillFrom = fillFrom && fillFrom < event.at ? fillFrom : event.at;
    soon("fill", fill, 250);
  } else {
    return;
  }
  trim();
}

let fillFrom = null; // the oldest stub's time: one page from there fills them in

async function fill() {
  const from = fillFrom;
  fillFrom = null;
  const query = new URLSearchParams({ from, limit: MAX_ROWS });
  if (state.filters.to) query.set("to", state.filters.to);
  const page = await api("GET", `/orders?${query}`);
  merge(page.orders);
  const left = [...state.orders.values()].filter((order) => order.customer === null);
  if (page.next_cursor && left.length) { // more came than a page holds: on from the last one
    fillFrom = page.orders.at(-1).timestamp;
    soon("fill", fill, 0);
  }
}

function merge(orders) {
  for (const order of orders) {
    const known = state.orders.get(order.id);
    if (known && known.updated_at > order.updated_at) { // an event saw a later change
      Object.assign(known, { customer: order.customer, items: order.items });
    } else {
      state.orders.set(order.id, order);
    }
  }
  trim();
}

function trim() {
  for (const [id, order] of state.orders) if (!matches(order)) state.orders.delete(id);
  const ids = [...state.orders.keys()].sort(); // ids sort by creation time
  for (const id of ids.slice(0, Math.max(0, ids.length - MAX_ROWS))) state.orders.delete(id);
  render();
}

async function loadOrders() {
  const load = ++state.loads;
  state.buffered = [];
  try {
    const { page, since } = await newestPage();
    if (load !== state.loads) return; // the filters changed meanwhile
    state.orders = new Map();
    merge(page.orders);
    for (const event of state.buffered) applyEvent(event);
    $("orders-note").textContent = since ? `newest, created since ${timeOnly.format(since)}` : "";
  } finally {
    if (load === state.loads) state.buffered = null;
  }
}

// Listing is oldest first. When the range holds more than a table, look for a start time
// whose page holds the rest of the range and at least half a table (those are the newest).
// Starts are searched as distances back from the range's end: by fours until one overflows
// and a nearer one fits, then halving the gap between the two (by ratio while it is wide).
async function newestPage() {
  const { status, from, to } = state.filters;
  const get = (start) => {
    const query = new URLSearchParams({ limit: MAX_ROWS });
    for (const [name, value] of Object.entries({ status, from: start, to })) {
      if (value) query.set(name, value);
    }
    return api("GET", `/orders?${query}`);
  };
  let page = await get(from);
  if (!page.next_cursor) return { page, since: null };
  const end = to ? Date.parse(to) : Date.now();
  let full = from ? end - Date.parse(from) : Infinity; // a start this far back overflows
  let fit = 0; // and one this far back fits
  let found = null;
  for (let step = 0; step < 24 && full - fit > 1; step += 1) {
    if (found && found.orders.length >= MAX_ROWS / 2) break;
    let back;
    if (full === Infinity) back = fit ? fit * 4 : 10_000;
    else if (fit === 0) back = Math.min(full / 4, 10_000);
    else back = full / fit > 2 ? Math.sqrt(full * fit) : (full + fit) / 2;
    const probe = await get(micros(end - back));
    if (probe.next_cursor) {
      full = back;
      page = probe; // should nothing fit, the oldest of the narrowest range that overflows
    } else {
      fit = back;
      found = probe;
    }
  }
  if (found?.orders.length) return { page: found, since: end - fit };
  return { page, since: end - full };
}

const rows = new Map(); // id → its <tr>, kept so an update does not rebuild the table
let drawing = false;

function render() {
  if (!drawing) {
    drawing = true;
    requestAnimationFrame(drawTable);
  }
}

function drawTable() {
  drawing = false;
  const body = $("orders");
  for (const [id, row] of rows) {
    if (!state.orders.has(id)) { row.remove(); rows.delete(id); }
  }
  let previous = null;
  for (const id of [...state.orders.keys()].sort().reverse()) {
    const order = state.orders.get(id);
    let row = rows.get(id);
    if (!row) {
      row = h("tr", { "data-testid": "order-row", "data-order-id": id, onclick: () => select(id) });
      rows.set(id, row);
    }
    fillRow(row, order);
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== row) body.insertBefore(row, expected);
    previous = row;
  }
  $("orders-empty").hidden = state.orders.size > 0;
}

function fillRow(row, order) {
  row.classList.toggle("selected", order.id === state.selected);
  const key = [order.status, order.updated_at, order.customer].join("\n");
  if (row.dataset.key === key) return;
  row.dataset.key = key;
  row.dataset.status = order.status;
  const pick = h("button", { type: "button", class: "link id", title: order.id,
    "aria-label": `Show order ${order.id}` }, `…${order.id.slice(-10)}`);
  row.replaceChildren(
    h("td", {}, when(order.timestamp)),
    h("td", {}, pick),
    h("td", { class: "customer" }, order.customer ?? "…"),
    h("td", { class: "items" }, order.items ? items(order.items) : "…"),
    h("td", {}, badge(order.status)),
    h("td", {}, when(order.updated_at)),
  );
}

function readFilters() {
  const form = $("filters");
  const at = (name) => {
    const { value } = form.elements[name]; // local time, as the input shows it
    return value ? micros(Date.parse(value)) : "";
  };
  state.filters = { status: form.elements.status.value, from: at("from"), to: at("to") };
  if (state.filters.from && state.filters.to && state.filters.from > state.filters.to) {
    showError("'Created from' is after 'to'.");
    return false;
  }
  return true;
}

// -- counts and the chart --------------------------------------------------------------------

async function refreshStats() {
  const stats = await api("GET", "/orders/stats");
  for (const status of STATUSES) {
    $(`count-${status}`).textContent = String(stats.by_status[status] ?? 0);
  }
  const pick = (reason) => () => {
    $("reason-contains").value = reason;
    $("reason-contains").focus();
  };
  $("failed-reasons").replaceChildren(...stats.failed_reasons.map(({ reason, count }) => h("li", {},
    h("button", { type: "button", class: "link", "data-testid": "failed-reason",
      title: "Retry these", onclick: pick(reason) }, reason),
    ` × ${count}`)));
  $("no-failures").hidden = stats.failed_reasons.length > 0;
}

let chartKey = "";

function drawChart() {
  const end = Math.ceil((Date.now() + 1) / BUCKET_MS) * BUCKET_MS; // the current 10 s, partly past
  const start = end - BUCKETS * BUCKET_MS;
  state.shipped = state.shipped.filter((at) => at >= start);
  const counts = new Array(BUCKETS).fill(0);
  for (const at of state.shipped) {
    counts[Math.min(BUCKETS - 1, Math.floor((at - start) / BUCKET_MS))] += 1;
  }
  const key = `${start} ${counts}`;
  if (key === chartKey) return;
  chartKey = key;
  const peak = Math.max(4, ...counts);
  const bars = counts.map((count, i) => {
    const height = (count / peak) * 100;
    const from = timeOnly.format(start + i * BUCKET_MS);
    return svg("rect",
      { x: 20 + i * 10, y: 110 - height, width: 8, height, class: "bar", "data-count": count },
      svg("title", {}, `${plural(count, "order")} shipped in the 10 s from ${from}`));
  });
  $("chart").replaceChildren(
    svg("line", { x1: 18, x2: 320, y1: 110, y2: 110, class: "axis" }),
    svg("text", { x: 16, y: 14, "text-anchor": "end" }, String(peak)),
    svg("text", { x: 16, y: 110, "text-anchor": "end" }, "0"),
    svg("text", { x: 20, y: 126 }, "5 min ago"),
    svg("text", { x: 318, y: 126, "text-anchor": "end" }, "now"),
    ...bars,
  );
  const total = counts.reduce((a, b) => a + b, 0);
  $("throughput-total").textContent =
    `${total} shipped in the last 5 minutes (since this page opened)`;
}

// -- one order -------------------------------------------------------------------------------

async function select(id) {
  state.selected = id;
  $("detail-message").textContent = "";
  render();
  await attempt(refreshDetail);
}

async function refreshDetail() {
  const id = state.selected;
  let order;
  try {
    order = await api("GET", `/orders/${encodeURIComponent(id)}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
    $("detail-message").textContent = "This order was deleted.";
    return;
  }
  if (id !== state.selected) return;
  if (state.orders.has(id)) merge([order]);
  $("detail-empty").hidden = true;
  $("detail-body").hidden = false;
  $("detail-id").textContent = order.id;
  $("detail-status").replaceChildren(badge(order.status));
  $("detail-status").dataset.status = order.status;
  $("detail-customer").textContent = order.customer;
  $("detail-items").textContent = items(order.items);
  $("detail-created").replaceChildren(when(order.timestamp));
  $("detail-history").replaceChildren(...order.history.map((entry) =>
    h("li", { "data-testid": "history-entry" },
      when(entry.at), " ", badge(entry.status), entry.reason ? ` ${entry.reason}` : "")));
  $("detail-shipment").textContent = order.shipment ? JSON.stringify(order.shipment, null, 2)
    : order.status === "shipped" ? "The shipper said nothing more." : "Not shipped.";
  $("detail-cancel").disabled = !["pending", "processing"].includes(order.status);
  $("detail-retry").disabled = order.status !== "failed";
}

async function act(button, output, work) {
  button.disabled = true;
  output.classList.remove("failed");
  try {
    output.textContent = await work();
  } catch (error) {
    output.textContent = describe(error);
    output.classList.add("failed");
  } finally {
    button.disabled = false;
  }
}

async function onOrder(verb, reason) {
  const id = state.selected;
  await act($(`detail-${verb}`), $("detail-message"), async () => {
    const ref = await api("POST", `/orders/${encodeURIComponent(id)}/${verb}`, { reason });
    return `Now ${ref.status}.`;
  });
  await attempt(refreshDetail);
}

// -- start -----------------------------------------------------------------------------------

async function resync() {
  await refreshStats(); // a 401 here asks for a token
  state.lastSeq = null; // the table is loaded again: no need to resume
  await connect();
  await loadOrders();
}

async function start() { // until it works: the service may be starting, or stopping
  for (;;) {
    try {
      await resync();
      showError(null);
      return;
    } catch (error) {
      showError(describe(error));
      await sleep(2000);
    }
  }
}

function wire() {
  $("process").addEventListener("click", () => act($("process"), $("action-result"), async () => {
    const started = await api("POST", "/orders/process");
    return `${plural(started.orders, "pending order")} sent to shipping.`;
  }));
  $("bulk-retry-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const contains = $("reason-contains").value.trim();
    act($("bulk-retry"), $("action-result"), async () => {
      const which = contains ? { reason_contains: contains } : {};
      const done = await api("POST", "/orders/retry", which);
      return `${plural(done.count, "failed order")} sent back to pending.`;
    });
  });
  $("detail-cancel").addEventListener("click",
    () => onOrder("cancel", "cancelled from the dashboard"));
  $("detail-retry").addEventListener("click", () => onOrder("retry", "retried from the dashboard"));
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    if (readFilters()) attempt(loadOrders);
  });
  $("filters").addEventListener("reset", () => setTimeout(() => { // once the form is cleared
    readFilters();
    attempt(loadOrders);
  }));
  $("filter-status").addEventListener("change", () => { if (readFilters()) attempt(loadOrders); });
  $("change-token").hidden = !state.token;
  $("change-token").addEventListener("click", () => askToken("").then(() => attempt(connect)));
}

wire();
drawChart();
setInterval(drawChart, 1000);
setInterval(() => attempt(refreshStats), 5000);
start();
