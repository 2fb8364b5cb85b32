// The API, readable: /docs shows every operation of /openapi.json, grouped by tag, with its
// role, its request and answer shapes (each schema as a list of fields) and their examples.
// Plain JavaScript, no build step; what the document says goes into the page as text (append,
// textContent), never as HTML.
"use strict";

function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const code = (text) => h("code", {}, text);
const table = (rows) => (rows.length ? h("table", {}, ...rows) : null);
const row = (...cells) => h("tr", {}, ...cells.map((cell) => h("td", {}, cell)));
const refName = (ref) => ref.split("/").pop();
// Text with `code` spans, as the document writes them: the spans as code, the rest as text.
const prose = (text) => String(text).split("`").map((part, i) => (i % 2 ? code(part) : part));
const example = (value) => h("pre", { "data-testid": "example" }, JSON.stringify(value, null, 2));

let components = {};

function resolve(schema) {
  return schema && schema.$ref ? components[refName(schema.$ref)] || {} : schema || {};
}

// A schema's type in a few words: "string (date-time)", "array of Item", "OrderRef or null".
function typeOf(schema) {
  if (!schema) return "any";
  if (schema.$ref) {
    const target = resolve(schema);
    return target.enum ? `${refName(schema.$ref)}, ${typeOf(target)}` : refName(schema.$ref);
  }
  if (schema.anyOf) return schema.anyOf.map(typeOf).join(" or ");
  if (schema.enum) return `one of ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`;
  if (schema.type === "array") return `array of ${typeOf(schema.items)}`;
  if (schema.type === "object" && !schema.properties) return "object";
  const type = Array.isArray(schema.type) ? schema.type.join(" or ") : schema.type || "any";
  return schema.format ? `${type} (${schema.format})` : type;
}

// Its limits, in words: "1 to 200 characters", "at most 100 items", "default 100".
function limits(schema) {
  const s = resolveUnion(schema);
  const said = [];
  const range = (low, high, unit) => {
    if (low !== undefined && high !== undefined) said.push(`${low} to ${high}${unit}`);
    else if (low !== undefined) said.push(`at least ${low}${unit}`);
    else if (high !== undefined) said.push(`at most ${high}${unit}`);
  };
  range(s.minLength, s.maxLength, " characters");
  range(s.minimum, s.maximum, "");
  range(s.minItems, s.maxItems, " items");
  if (s.default !== undefined && s.default !== null) said.push(`default ${JSON.stringify(s.default)}`);
  return said.join("; ");
}

function resolveUnion(schema) {
  if (schema && schema.anyOf) {
    const others = schema.anyOf.filter((s) => s.type !== "null");
    if (others.length === 1) return resolve(others[0]);
  }
  return resolve(schema);
}

// The inner object of a field, if it has one to show: a Struct, or an array of them.
function innerObject(schema) {
  let s = resolveUnion(schema);
  if (s.type === "array") s = resolveUnion(s.items);
  return s.properties ? s : null;
}

// A schema as a list of its fields: name, type, required or not, what it is, its limits.
function fields(schema, depth = 0) {
  const s = resolve(schema);
  if (!s.properties) {
    return h("p", { class: "shape" }, typeOf(schema), s.description ? ` — ${s.description}` : "");
  }
  const required = new Set(s.required || []);
  const items = Object.entries(s.properties).map(([name, field]) => {
    const about = field.description || resolveUnion(field).description || limits(field);
    const inner = depth < 3 ? innerObject(field) : null;
    return h("li", { "data-field": name },
      code(name), " ", h("span", { class: "type" }, typeOf(field)),
      h("span", { class: required.has(name) ? "required" : "optional" },
        required.has(name) ? " required" : " optional"),
      about ? " — " : "", ...(about ? prose(about) : []),
      inner ? fields(inner, depth + 1) : null);
  });
  return h("ul", { class: "fields", "data-testid": "fields" }, ...items);
}

function role(op) {
  const name = op["x-orderflow-role"] || "none";
  const text = name === "none" ? "public" : `role: ${name}`;
  return h("span", { class: `role role-${name}`, "data-testid": "role" }, text);
}

function request(op) {
  const body = op.requestBody ? op.requestBody.content["application/json"] : null;
  if (!body) return null;
  return h("div", { class: "request", "data-testid": "request" },
    h("h4", {}, "Request body ", code(typeOf(body.schema)),
      op.requestBody.required ? "" : " (optional)"),
    fields(body.schema),
    body.example !== undefined ? h("p", {}, "For example:") : null,
    body.example !== undefined ? example(body.example) : null);
}

function answers(op) {
  const entries = Object.entries(op.responses);
  const [okStatus, ok] = entries.find(([status]) => status < "300") || [];
  const shown = [];
  if (ok) {
    const [media, content] = Object.entries(ok.content || {})[0] || [];
    shown.push(h("div", { class: "answer", "data-testid": "answer" },
      h("h4", {}, `Answer ${okStatus}`, media ? " " : "", media ? code(media) : ""),
      h("p", {}, ...prose(ok.description)),
      content && content.schema && Object.keys(content.schema).length ? fields(content.schema) : null,
      content && content.example !== undefined ? example(content.example) : null));
  }
  const problems = entries.filter(([status]) => status >= "300")
    .map(([status, answer]) => row(status, h("span", {}, ...prose(answer.description))));
  if (problems.length) shown.push(h("h4", {}, "Problems"), table(problems));
  return shown;
}

function operation(path, method, op) {
  const params = (op.parameters || []).map((p) => row(
    h("span", {}, code(p.name), ` (${p.in}${p.required ? ", required" : ""})`),
    typeOf(p.schema), h("span", {}, ...prose(p.description || limits(p.schema)))));
  const text = (op.description || "").split("\n\n");
  return h("section", { "data-testid": "operation", "data-operation": `${method} ${path}` },
    h("h3", {}, h("span", { class: "method" }, method.toUpperCase()), code(path), " ", role(op)),
    h("p", { class: "summary" }, op.summary),
    ...text.filter(Boolean).map((part) => h("p", {}, ...prose(part))),
    params.length ? h("h4", {}, "Parameters") : null,
    table(params),
    request(op),
    ...answers(op));
}

async function show() {
  const ops = document.getElementById("ops");
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) throw new Error(`/openapi.json answered ${response.status}`);
    const doc = await response.json();
    components = doc.components.schemas;
    const byTag = new Map((doc.tags || []).map((tag) => [tag.name, []]));
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        if (method === "head") continue;
        const tag = (op.tags || ["other"])[0];
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push(operation(path, method, op));
      }
    }
    const about = new Map((doc.tags || []).map((tag) => [tag.name, tag.description]));
    const groups = [...byTag].filter(([, sections]) => sections.length).map(([tag, sections]) =>
      h("section", { class: "tag", "data-testid": "tag", "data-tag": tag },
        h("h2", { id: `tag-${tag}` }, tag),
        about.get(tag) ? h("p", {}, ...prose(about.get(tag))) : null,
        ...sections));
    const contents = h("nav", {}, ...[...byTag.keys()].map((tag) =>
      h("a", { href: `#tag-${tag}` }, tag)));
    ops.replaceChildren(h("p", { "data-testid": "about" }, ...prose(doc.info.description)),
      contents,
      ...groups, h("h2", {}, "Schemas"),
      ...Object.keys(components).sort().map((name) => h("section", { "data-schema": name },
        h("h3", {}, name), fields({ $ref: `#/components/schemas/${name}` }))));
  } catch (error) {
    ops.replaceChildren(h("p", { role: "alert" }, `Could not read the API: ${error.message}`));
  } finally {
    ops.removeAttribute("aria-busy");
  }
}

show();
