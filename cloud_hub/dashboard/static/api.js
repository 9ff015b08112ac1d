// The hub's API as the dashboard calls it: every request sends the signed-in token.
// The token lives in this tab's sessionStorage only (never a URL, never a cookie).

const KEY = "edgeloop.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

async function detailOf(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
    return JSON.stringify(body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// GET (or another method with a JSON body) on /v1/...; resolves to the JSON answer,
// rejects with ApiError (status and the hub's detail).
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!response.ok) throw new ApiError(response.status, await detailOf(response));
  return response.json();
}

// Exchange a one-time sign-in code (from the URL fragment) for a token; no token needed.
export async function exchangeCode(code) {
  const answer = await api("/v1/session/exchange", { method: "POST", body: { code } });
  return answer;
}
