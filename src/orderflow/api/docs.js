// The API, readable: /docs lists every operation of /openapi.json. Plain JavaScript, no build
// step; what the document says goes into the page as text (append, textContent), never as HTML.
"use strict";

function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children.filter((child) => child !== null));
  return node;
}

const code = (text) => h("code", {}, text);
const table = (rows) => (rows.length ? h("table", {}, ...rows) : null);
const row = (...cells) => h("tr", {}, ...cells.map((cell) => h("td", {}, cell)));

function operation(path, method, op) {
  const params = (op.parameters || []).map((p) => row(
    h("span", {}, code(p.name), ` (${p.in})`), JSON.stringify(p.schema), p.description || ""));
  const body = op.requestBody ? op.requestBody.content["application/json"] : null;
  const codes = Object.entries(op.responses).map(([status, answer]) =>
    row(status, answer.description));
  return h("section", { "data-testid": "operation", "data-operation": `${method} ${path}` },
    h("h3", {}, h("span", { class: "method" }, method.toUpperCase()), code(path)),
    h("p", {}, op.summary),
    op.description ? h("p", {}, op.description) : null,
    table(params),
    body ? h("p", {}, "Body: ", code(body.schema.$ref.split("/").pop()),
      ...(body.example ? [", for example ", h("pre", {}, JSON.stringify(body.example, null, 1))]
        : [])) : null,
    table(codes));
}

async function show() {
  const ops = document.getElementById("ops");
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) throw new Error(`/openapi.json answered ${response.status}`);
    const doc = await response.json();
    const sections = [];
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        if (method !== "head") sections.push(operation(path, method, op));
      }
    }
    ops.replaceChildren(...sections, h("h2", {}, "Schemas"),
      h("pre", {}, JSON.stringify(doc.components.schemas, null, 2)));
  } catch (error) {
    ops.replaceChildren(h("p", { role: "alert" }, `Could not read the API: ${error.message}`));
  } finally {
    ops.removeAttribute("aria-busy");
  }
}

show();
