// The service's HTTP API as the page uses it: the bearer token (asked for on a 401, kept for
// the tab), JSON calls, what the token's role may do, and the one error strip.

import { $ } from "./dom.js";

const TOKEN_KEY = "orderflow.token";

export const session = {
  token: sessionStorage.getItem(TOKEN_KEY),
  canOperate: false, // learnt from the service (`learnRole`), never guessed
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export function authorize(headers) {
  if (session.token) headers.authorization = `Bearer ${session.token}`;
  return headers;
}

export async function api(method, path, body) {
  for (;;) {
    const init = { method, headers: authorize({ accept: "application/json" }) };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      await askToken(session.token ? "That token was refused: try another." : "");
      continue;
    }
    const json = (response.headers.get("content-type") ?? "").includes("json");
    const data = json ? await response.json() : null;
    if (!response.ok) throw new ApiError(response.status, problemText(data, response));
    return data;
  }
}

function problemText(problem, response) {
  if (!problem?.detail) return response.statusText;
  const fields = (problem.errors ?? []).map((error) => `${error.field}: ${error.message}`);
  return fields.length ? fields.join("; ") : problem.detail;
}

// A dry run of a bulk cancel of one order that cannot exist changes nothing, and is refused
// (403) to a token that may not operate: the page shows actions only to a token that may.
const NO_ORDER = `order_${"0".repeat(30)}`;

export async function learnRole() {
  const response = await fetch("/orders/cancel", {
    method: "POST",
    headers: authorize({ accept: "application/json", "content-type": "application/json" }),
    body: JSON.stringify({ ids: [NO_ORDER], dry_run: true }),
  });
  session.canOperate = response.ok; // 401 or 403: it may not; a 503 at start: not known yet
  document.body.classList.toggle("can-operate", session.canOperate);
  return session.canOperate;
}

let asking = null; // one question at a time, whoever met the 401

export function askToken(message) {
  asking ??= new Promise((resolve) => {
    const dialog = $("token-dialog");
    $("token-error").textContent = message;
    $("token-error").hidden = !message;
    $("token-input").value = "";
    const done = () => {
      dialog.close();
      asking = null;
      resolve();
    };
    dialog.onsubmit = (event) => {
      event.preventDefault();
      session.token = $("token-input").value.trim();
      sessionStorage.setItem(TOKEN_KEY, session.token);
      $("change-token").hidden = false;
      done();
    };
    dialog.oncancel = (event) => { // Escape: keep the token there is; without one, nothing works
      event.preventDefault();
      if (session.token) done();
    };
    dialog.showModal();
  });
  return asking;
}

export function describe(error) {
  if (error instanceof ApiError) {
    return error.status === 403 ? `Your token may not do this: ${error.message}` : error.message;
  }
  if (error.message !== "Failed to fetch") console.error(error); // not the network: a bug
  return "The service does not answer. Trying again…";
}

export function showError(message) {
  $("error").hidden = message === null;
  $("error").textContent = message ?? "";
}

/** Run `work`, showing what went wrong in the error strip (and clearing it when it works). */
export async function attempt(work) {
  try {
    await work();
    showError(null);
  } catch (error) {
    showError(describe(error));
  }
}

/** Run `work` for `button`, writing what it returns (or why it failed) into `output`. */
export async function act(button, output, work) {
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
