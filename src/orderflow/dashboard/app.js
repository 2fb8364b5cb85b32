// orderflow dashboard: plain JavaScript modules, no dependencies, no build step. It reads the
// HTTP API of the service that serves it. This module starts the page: the live event stream,
// the counts, the actions panel, and the refreshes of every view; the views are modules of
// their own (orders, detail, chart, ops).

import {
  act, api, askToken, attempt, authorize, describe, learnRole, session, showError,
} from "./api.js";
import { refreshChart } from "./chart.js";
import { refreshDetail, select, selectedId, wireDetail } from "./detail.js";
import { $, h, plural, sleep, soon } from "./dom.js";
import { refreshInstances, refreshWebhooks, wireOps } from "./ops.js";
import { applyEvent, bulkMatching, loadOrders, whenPicked, wireOrders } from "./orders.js";

const STATUSES = ["pending", "processing", "shipped", "cancelled", "failed"];
const EVENT_TYPES = ["order.submitted", "order.processing", "order.shipped", "order.failed",
  "order.attempt_failed", "order.cancelled", "order.retried", "order.released",
  "order.rescued", "order.deleted"];

let lastSeq = null;

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
  events = session.token ? streamWithToken() : streamWithEventSource();
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
    if (down && lastSeq === null) attempt(loadOrders); // no id to resume from
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
        const after = lastSeq === null ? "" : `?after=${lastSeq}`;
        const headers = authorize({ accept: "text/event-stream" });
        const response = await fetch(`/events${after}`, { headers, signal: stop.signal });
        if (response.status === 401) {
          opened();
          await askToken("That token was refused: try another.");
          continue;
        }
        if (response.status === 410) { // resumed too late: what we missed is no longer kept
          lastSeq = null;
          reload = true;
          continue;
        }
        if (!response.ok) throw new Error(response.statusText);
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
  lastSeq = event.seq;
  applyEvent(event);
  soon("stats", () => attempt(refreshStats), 500);
  if (["order.submitted", "order.shipped", "order.failed"].includes(event.type)) {
    soon("chart", () => attempt(refreshChart), 1000);
  }
  if (session.canOperate) soon("webhooks", () => attempt(refreshWebhooks), 1000);
  if (event.order_id === selectedId()) soon("detail", () => attempt(refreshDetail), 200);
}

// -- counts and the actions panel ------------------------------------------------------------

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

async function refreshReadiness() {
  const ready = await api("GET", "/readyz");
  // Without auto-process, pending orders (retried ones too) wait for "Process pending".
  $("auto-process-hint").hidden = ready.auto_process !== false;
}

// -- start -----------------------------------------------------------------------------------

async function resync() {
  await refreshStats(); // a 401 here asks for a token
  await learnRole();
  lastSeq = null; // the table is loaded again: no need to resume
  await connect();
  await Promise.all([loadOrders(), refreshReadiness(), refreshChart(), refreshInstances(),
    refreshWebhooks()]);
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
  wireOrders();
  wireDetail();
  wireOps();
  whenPicked(select);
  $("process").addEventListener("click", () => act($("process"), $("action-result"), async () => {
    const started = await api("POST", "/orders/process");
    return `${plural(started.orders, "pending order")} sent to shipping.`;
  }));
  $("bulk-retry-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const contains = $("reason-contains").value.trim();
    const which = contains ? { reason_contains: contains } : {};
    bulkMatching("retry", $("bulk-retry"), $("action-result"), which,
      contains ? `whose reason contains “${contains}”` : "(every one)");
  });
  $("change-token").hidden = !session.token;
  $("change-token").addEventListener("click", () => askToken("").then(() => attempt(async () => {
    await learnRole();
    await Promise.all([connect(), refreshWebhooks()]);
  })));
}

wire();
start();
setInterval(() => attempt(refreshStats), 5000);
setInterval(() => attempt(refreshChart), 15_000);
setInterval(() => attempt(async () => {
  await refreshInstances();
  await refreshWebhooks();
}), 3000);
