// Talking to the app's API: the function key (this tab's sessionStorage, sent as a header,
// never in a URL), JSON errors, and the polling schedule with backoff.

const KEY_NAME = "vmpool.functionKey";

export class KeyRefused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class ApiFailure extends Error {}

export const key = {
  get: () => sessionStorage.getItem(KEY_NAME),
  set: (value) => sessionStorage.setItem(KEY_NAME, value),
  clear: () => sessionStorage.removeItem(KEY_NAME),
};

// Paths are relative to the page (/api/dashboard), so "pool" is /api/pool wherever the app is
// mounted.
export async function api(path, { method = "GET", body } = {}) {
  const headers = { "x-functions-key": key.get() || "" };
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiFailure(`the app is not reachable (${err.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.status === 401) {
    throw new KeyRefused(response.status,
      `The function key was refused (HTTP ${response.status}). Enter a valid key.`);
  }
  if (!response.ok) {
    const why = data?.error ? `${data.error.code}: ${data.error.message}` : response.statusText;
    throw new ApiFailure(`${method} ${path} failed (HTTP ${response.status}) ${why}`);
  }
  return data;
}

// The operations the deployed app offers, from its OpenAPI document (anonymous), so the page
// shows an action or a view only where the API has it.
export async function operations() {
  try {
    const response = await fetch("openapi.json", { cache: "no-store", credentials: "omit" });
    const doc = await response.json();
    const out = new Set();
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const method of Object.keys(item)) out.add(`${method.toUpperCase()} ${path}`);
    }
    return out;
  } catch {
    return new Set();
  }
}

// Calls `tick` again and again: every `base` ms while it succeeds, doubling up to `max` ms
// while it fails; `onState` hears of every success and failure. `poke()` runs it at once.
export function poll(tick, onState, { base = 2000, max = 30000 } = {}) {
  let delay = base;
  let timer = null;
  let stopped = false;
  let lastOk = null;
  const run = async () => {
    clearTimeout(timer);
    if (stopped) return;
    try {
      await tick();
      lastOk = new Date();
      delay = base;
      onState({ ok: true, lastOk });
    } catch (err) {
      if (err instanceof KeyRefused) {
        stopped = true;
        onState({ ok: false, refused: true, error: err, lastOk });
        return;
      }
      delay = Math.min(delay * 2, max);
      onState({ ok: false, error: err, lastOk, retryIn: delay });
    }
    if (!stopped) timer = setTimeout(run, delay);
  };
  run();
  return {
    poke: run,
    stop: () => { stopped = true; clearTimeout(timer); },
  };
}
