// One order: its facts, history and shipment, kept current by the event stream; cancel and
// retry it. After an action the panel says where the order is now, and says it again each
// time the order moves (it does not stay at the state the action's answer had).

import { ApiError, act, api, attempt } from "./api.js";
import { $, badge, h, items, when } from "./dom.js";
import { drawTable } from "./orders.js";

const detail = {
  id: null,
  actedOn: null, // the order an action was taken on from this panel, while it is shown
  note: "", // what the last retry's answer noted (auto-process off)
};

export const selectedId = () => detail.id;

export async function select(id) {
  detail.id = id;
  detail.actedOn = null;
  detail.note = "";
  $("detail-message").textContent = "";
  $("detail-message").classList.remove("failed");
  $("detail-note").hidden = true;
  $("detail-id").textContent = id;
  drawTable(id);
  await attempt(refreshDetail);
}

export async function refreshDetail() {
  const id = detail.id;
  if (id === null) return;
  let order;
  try {
    order = await api("GET", `/orders/${encodeURIComponent(id)}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
    $("detail-message").textContent = "This order was deleted.";
    return;
  }
  if (id !== detail.id) return;
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
  if (detail.actedOn === id && !$("detail-message").classList.contains("failed")) {
    $("detail-message").textContent = `Now ${order.status}.`;
  }
  // A retried order waits for a trigger while auto-process is off: say so while it waits.
  $("detail-note").textContent = detail.note;
  $("detail-note").hidden = !(detail.actedOn === id && detail.note && order.status === "pending");
}

async function onOrder(verb, reason) {
  const id = detail.id;
  detail.actedOn = id;
  await act($(`detail-${verb}`), $("detail-message"), async () => {
    const ref = await api("POST", `/orders/${encodeURIComponent(id)}/${verb}`, { reason });
    if (verb === "retry") detail.note = ref.note ?? "";
    return `Now ${ref.status}.`;
  });
  await attempt(refreshDetail);
}

export function wireDetail() {
  $("detail-cancel").addEventListener("click",
    () => onOrder("cancel", "cancelled from the dashboard"));
  $("detail-retry").addEventListener("click", () => onOrder("retry", "retried from the dashboard"));
}
