// Operations: the instances processing orders on this store (GET /instances), and the webhook
// subscriptions (an operate token's view): their state, lag in events, recent delivery
// attempts, and replay from a seq.

import { act, api, session } from "./api.js";
import { $, h, plural, when } from "./dom.js";

export async function refreshInstances() {
  const { instances } = await api("GET", "/instances");
  $("instances").replaceChildren(...instances.map((instance) => h("tr",
    { "data-testid": "instance-row", "data-name": instance.name,
      "data-live": String(instance.live) },
    h("td", { class: "id", title: instance.name }, instance.name),
    h("td", {}, when(instance.started_at)),
    h("td", {}, when(instance.last_heartbeat)),
    h("td", { class: "number", "data-testid": "instance-held" }, String(instance.held)),
    h("td", { class: "number", "data-testid": "instance-in-flight" },
      String(instance.in_flight)),
    h("td", {}, h("span", { class: `badge ${instance.live ? "live" : "gone"}`,
      "data-testid": "instance-state" }, instance.live ? "live" : "gone")))));
  $("instances-empty").hidden = instances.length > 0;
  const live = instances.filter((instance) => instance.live).length;
  $("instances-summary").textContent = `${live} live of ${instances.length}`;
}

// -- webhooks ------------------------------------------------------------------------------------

let shownDeliveries = null; // the subscription whose deliveries are listed

export async function refreshWebhooks() {
  $("webhooks-locked").hidden = session.canOperate;
  $("webhooks-body").hidden = !session.canOperate;
  if (!session.canOperate) return; // the webhook routes are an operate token's
  const { webhooks } = await api("GET", "/webhooks");
  $("webhooks").replaceChildren(...webhooks.map((webhook) => {
    const state = webhook.disabled ? "disabled" : "enabled";
    return h("tr", { "data-testid": "webhook-row", "data-webhook-id": webhook.id,
      "data-state": state, class: webhook.id === shownDeliveries ? "selected" : null },
    h("td", { class: "url" }, webhook.url),
    h("td", {}, webhook.types.length ? webhook.types.join(", ") : "all"),
    h("td", { "data-testid": "webhook-state" },
      h("span", { class: `badge ${state}` }, state),
      webhook.disabled_reason ? ` ${webhook.disabled_reason}` : ""),
    h("td", { class: "number", "data-testid": "webhook-lag",
      title: `cursor ${webhook.cursor}` }, String(webhook.lag)),
    h("td", {}, h("button", { type: "button", class: "link", "data-testid": "webhook-show",
      onclick: () => showDeliveries(webhook.id) }, "Deliveries")));
  }));
  $("webhooks-empty").hidden = webhooks.length > 0;
  if (shownDeliveries && !webhooks.some((webhook) => webhook.id === shownDeliveries)) {
    shownDeliveries = null;
    $("deliveries-panel").hidden = true;
  } else if (shownDeliveries) {
    await refreshDeliveries();
  }
}

async function showDeliveries(id) {
  shownDeliveries = id;
  $("replay-result").textContent = "";
  $("deliveries-title").textContent = `Deliveries of ${id}`;
  $("deliveries-panel").hidden = false;
  await refreshDeliveries();
  for (const row of document.querySelectorAll('[data-testid="webhook-row"]')) {
    row.classList.toggle("selected", row.dataset.webhookId === id);
  }
}

async function refreshDeliveries() {
  const id = shownDeliveries;
  const { deliveries } = await api("GET", `/webhooks/${encodeURIComponent(id)}/deliveries`);
  if (id !== shownDeliveries) return;
  $("deliveries").replaceChildren(...deliveries.map((delivery) => h("tr",
    { "data-testid": "delivery-row", "data-seq": delivery.seq, "data-outcome": delivery.outcome },
    h("td", { class: "number" }, String(delivery.seq)),
    h("td", { class: "number" }, String(delivery.attempt)),
    h("td", { "data-testid": "delivery-status" },
      delivery.status_code === null ? "no answer" : String(delivery.status_code)),
    h("td", { class: "number", "data-testid": "delivery-latency" },
      `${Math.round(delivery.latency_ms)} ms`),
    h("td", {}, delivery.outcome),
    h("td", { class: "reason" }, delivery.error ?? ""),
    h("td", {}, when(delivery.at)))));
  $("deliveries-empty").hidden = deliveries.length > 0;
}

export function wireOps() {
  $("replay-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = shownDeliveries;
    const seq = $("replay-seq").value.trim();
    act($("replay"), $("replay-result"), async () => {
      const body = seq === "" ? {} : { after_seq: Number(seq) };
      const webhook = await api("POST", `/webhooks/${encodeURIComponent(id)}/replay`, body);
      await refreshWebhooks();
      return `Delivering again after seq ${webhook.cursor}: ${plural(webhook.lag, "event")}`
        + " to go.";
    });
  });
}
