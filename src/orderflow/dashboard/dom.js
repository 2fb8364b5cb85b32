// Small DOM helpers shared by the dashboard's modules. Whatever the server sends goes into the
// page as text (append, textContent, setAttribute), never as HTML.

export const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (name === "onchange") node.addEventListener("change", value);
    else if (value === true) node.setAttribute(name, "");
    else if (value !== null && value !== false && value !== undefined) {
      node.setAttribute(name, String(value));
    }
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function svg(tag, attributes, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

export const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const dateAndTime = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

export function when(at) {
  if (!at) return h("span", { class: "quiet" }, "–");
  const date = new Date(at);
  const today = date.toDateString() === new Date().toDateString();
  return h("time", { datetime: at, title: at }, (today ? timeOnly : dateAndTime).format(date));
}

export const badge = (status) =>
  h("span", { class: `badge ${status}`, "data-testid": "status-badge" }, status);
export const items = (list) => list.map((item) => `${item.name} × ${item.quantity}`).join(", ");
export const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
// Ours have microseconds; a browser's have milliseconds. The same precision compares as text.
export const micros = (ms) => new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

const timers = {};
/** Run `work` once `ms` from now, however often asked meanwhile. */
export function soon(name, work, ms) {
  timers[name] ??= setTimeout(() => { timers[name] = null; work(); }, ms);
}
