// The orders: one search box (an id, an id's tail, or a customer), status and time filters,
// newest or oldest first, a page at a time (the API's cursor); live updates from the event
// stream; row selection and bulk cancel and retry (of the rows picked, or of every order that
// matches the filters), each confirmed with its count first.

import { act, api, attempt } from "./api.js";
import { $, h, micros, plural, soon, when, badge, items } from "./dom.js";

export const PAGE_SIZE = 100;
const FOLLOW = 20; // short pages a search follows on at most (each reads a bounded number of orders)
// A whole id, or its tail as the table shows it ("…" and at least 8 hex digits, one a digit at
// least, so that a name such as "Deadbeef" is still searched for as a customer).
const ORDER_ID = /^(?:…|\.\.\.)?(order_[0-9a-f]{30}|(?=[a-f]*[0-9])[0-9a-f]{8,30})$/;

export const view = {
  query: { search: "", status: "", from: "", to: "", sort: "newest" },
  cursors: [null], // cursors[n]: what page n starts after (null: the first page)
  page: 0,
  next: null, // next_cursor of the page shown
  orders: new Map(), // id → order, in the order shown
  selected: new Set(), // ids ticked, across pages
  loads: 0,
};

/** The list's filters as the API takes them: `order` or `customer` from the search box. */
export function filters() {
  const { search, status, from, to } = view.query;
  const found = {};
  const text = search.trim();
  const id = ORDER_ID.exec(text.toLowerCase());
  if (id) found.order = id[1];
  else if (text) found.customer = text;
  if (status) found.status = status;
  if (from) found.from = from;
  if (to) found.to = to;
  return found;
}

export async function loadOrders() {
  const load = ++view.loads;
  const query = new URLSearchParams({ ...filters(), sort: view.query.sort, limit: PAGE_SIZE });
  const cursor = view.cursors[view.page];
  if (cursor) query.set("cursor", cursor);
  const page = await api("GET", `/orders?${query}`);
  // A search may answer a short page with a cursor (the store read its bound of orders and
  // found fewer matches): follow on, a few pages at most, so that a page shows what there is.
  for (let more = 0; more < FOLLOW && page.orders.length < PAGE_SIZE && page.next_cursor; more++) {
    query.set("cursor", page.next_cursor);
    query.set("limit", PAGE_SIZE - page.orders.length);
    const next = await api("GET", `/orders?${query}`);
    page.orders.push(...next.orders);
    page.next_cursor = next.next_cursor;
  }
  if (load !== view.loads) return; // asked again meanwhile
  const known = view.orders;
  view.orders = new Map();
  for (const order of page.orders) {
    const seen = known.get(order.id);
    // An event may have told of a later change than the page (read a moment before) holds.
    view.orders.set(order.id, seen && seen.updated_at > order.updated_at
      ? { ...order, status: seen.status, updated_at: seen.updated_at } : order);
  }
  view.next = page.next_cursor;
  drawTable();
}

/** An order event: a shown row changes; a new or deleted order reloads the page it is on. */
export function applyEvent(event) {
  const known = view.orders.get(event.order_id);
  if (known && event.type !== "order.deleted" && event.status && event.at >= known.updated_at) {
    known.status = event.status;
    known.updated_at = event.at;
    render();
    if (view.query.status && event.status !== view.query.status) soon("orders", reload, 300);
    return;
  }
  const atTheEdge = view.query.sort === "newest" ? view.page === 0 : view.next === null;
  if (event.type === "order.submitted" && atTheEdge) soon("orders", reload, 300);
  if (event.type === "order.deleted" && known) soon("orders", reload, 300);
}

const reload = () => attempt(loadOrders);

let drawing = false;
function render() { // once a frame, however many events came
  if (drawing) return;
  drawing = true;
  requestAnimationFrame(() => {
    drawing = false;
    drawTable();
  });
}

// -- the table ---------------------------------------------------------------------------------

export let onPick = () => {};
export function whenPicked(pick) { onPick = pick; }

export function drawTable(selectedId = $("detail-id").textContent) {
  const body = $("orders");
  body.replaceChildren(...[...view.orders.values()].map((order) => {
    const tick = h("input", { type: "checkbox", class: "operate", "data-testid": "row-select",
      "aria-label": `Select order ${order.id}`, checked: view.selected.has(order.id),
      onchange: (event) => {
        if (event.target.checked) view.selected.add(order.id);
        else view.selected.delete(order.id);
        drawSelection();
      } });
    tick.addEventListener("click", (event) => event.stopPropagation());
    const pick = h("button", { type: "button", class: "link id", title: order.id,
      "aria-label": `Show order ${order.id}` }, `…${order.id.slice(-10)}`);
    const row = h("tr", { "data-testid": "order-row", "data-order-id": order.id,
      "data-status": order.status, class: order.id === selectedId ? "selected" : null,
      onclick: () => onPick(order.id) },
    h("td", { class: "operate" }, tick),
    h("td", {}, when(order.timestamp)),
    h("td", {}, pick),
    h("td", { class: "customer" }, order.customer),
    h("td", { class: "items" }, items(order.items)),
    h("td", {}, badge(order.status)),
    h("td", {}, when(order.updated_at)));
    return row;
  }));
  $("orders-empty").hidden = view.orders.size > 0;
  $("orders-empty").textContent = view.query.search || view.query.status || view.query.from
    || view.query.to ? "No orders match." : "No orders yet.";
  $("page-number").textContent = `Page ${view.page + 1}`;
  $("page-prev").disabled = view.page === 0;
  $("page-next").disabled = view.next === null;
  const all = [...view.orders.keys()];
  $("select-page").checked = all.length > 0 && all.every((id) => view.selected.has(id));
  drawSelection();
}

function drawSelection() {
  const count = view.selected.size;
  $("selected-count").textContent = `${plural(count, "order")} selected`;
  $("bulk-cancel-selected").disabled = count === 0;
  $("bulk-retry-selected").disabled = count === 0;
  $("selection-clear").disabled = count === 0;
  const byId = "order" in filters();
  $("bulk-cancel-matching").disabled = byId;
  $("bulk-retry-matching").disabled = byId;
  $("bulk-matching-note").textContent = byId
    ? "A search by id matches one order: tick it instead." : "";
}

// -- bulk actions --------------------------------------------------------------------------------

const MAX_IDS = 1000;

const VERBS = {
  cancel: { done: "cancelled", which: "pending or processing" },
  retry: { done: "sent back to pending", which: "failed" },
};

/** Ask to confirm `text`; resolves true when confirmed. */
export function confirmed(text) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === "yes");
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function bulkSelected(verb) {
  const ids = [...view.selected];
  await act($(`bulk-${verb}-selected`), $("bulk-result"), async () => {
    if (!await confirmed(`${verb === "cancel" ? "Cancel" : "Retry"} ${plural(ids.length,
      "selected order")}? Only the ${VERBS[verb].which} ones are taken.`)) return "Nothing done.";
    // The API takes 1,000 ids a request; a selection over several pages may hold more.
    const done = { count: 0, note: null };
    for (let start = 0; start < ids.length; start += MAX_IDS) {
      const part = await api("POST", `/orders/${verb}`, { ids: ids.slice(start, start + MAX_IDS) });
      done.count += part.count;
      done.note ??= part.note;
    }
    view.selected.clear();
    return bulkMessage(verb, done);
  });
  await attempt(loadOrders);
}

/** Every order matching `which` (the list's filters, or a failure reason), after a dry run
 * says how many, and a confirmation naming that count. */
export async function bulkMatching(verb, button, output, which, described) {
  await act(button, output, async () => {
    const dry = await api("POST", `/orders/${verb}`, { ...which, dry_run: true });
    if (dry.count === 0) return `No ${VERBS[verb].which} orders ${described}.`;
    const what = plural(dry.count, `${VERBS[verb].which} order`);
    if (!await confirmed(`${verb === "cancel" ? "Cancel" : "Retry"} ${what} ${described}?`)) {
      return "Nothing done.";
    }
    return bulkMessage(verb, await api("POST", `/orders/${verb}`, which));
  });
  await attempt(loadOrders);
}

function bulkMessage(verb, done) {
  const message = `${plural(done.count, "order")} ${VERBS[verb].done}.`;
  return done.note ? `${message} Note: ${done.note}.` : message;
}

function matchingFilters() {
  const { customer, status, from, to } = filters();
  return Object.fromEntries(Object.entries({ customer, status, from, to })
    .filter(([, value]) => value));
}

// -- the controls --------------------------------------------------------------------------------

function readQuery() {
  const form = $("filters");
  const at = (name) => {
    const { value } = form.elements[name]; // local time, as the input shows it
    return value ? micros(Date.parse(value)) : "";
  };
  const query = { search: form.elements.search.value, status: form.elements.status.value,
    from: at("from"), to: at("to"), sort: view.query.sort };
  if (query.from && query.to && query.from > query.to) {
    $("filters-message").textContent = "'Created from' is after 'to'.";
    return false;
  }
  $("filters-message").textContent = "";
  view.query = query;
  view.cursors = [null];
  view.page = 0;
  return true;
}

export function wireOrders() {
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    if (readQuery()) attempt(loadOrders);
  });
  $("filters").addEventListener("reset", () => setTimeout(() => { // once the form is cleared
    if (readQuery()) attempt(loadOrders);
  }));
  $("filter-status").addEventListener("change", () => { if (readQuery()) attempt(loadOrders); });
  $("sort").addEventListener("click", () => {
    view.query.sort = view.query.sort === "newest" ? "oldest" : "newest";
    $("sort").dataset.sort = view.query.sort;
    $("sort").textContent = view.query.sort === "newest" ? "Newest first" : "Oldest first";
    view.cursors = [null];
    view.page = 0;
    attempt(loadOrders);
  });
  $("page-next").addEventListener("click", () => {
    view.cursors[view.page + 1] = view.next;
    view.page += 1;
    attempt(loadOrders);
  });
  $("page-prev").addEventListener("click", () => {
    view.page = Math.max(0, view.page - 1);
    attempt(loadOrders);
  });
  $("select-page").addEventListener("change", (event) => {
    for (const id of view.orders.keys()) {
      if (event.target.checked) view.selected.add(id);
      else view.selected.delete(id);
    }
    drawTable();
  });
  $("selection-clear").addEventListener("click", () => {
    view.selected.clear();
    drawTable();
  });
  for (const verb of ["cancel", "retry"]) {
    $(`bulk-${verb}-selected`).addEventListener("click", () => bulkSelected(verb));
    $(`bulk-${verb}-matching`).addEventListener("click", () => bulkMatching(verb,
      $(`bulk-${verb}-matching`), $("bulk-result"), matchingFilters(),
      "matching the filters"));
  }
  $("confirm-yes").addEventListener("click", () => $("confirm-dialog").close("yes"));
  $("confirm-no").addEventListener("click", () => $("confirm-dialog").close("no"));
  $("sort").dataset.sort = view.query.sort;
}
