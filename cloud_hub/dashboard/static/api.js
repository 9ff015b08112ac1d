// The hub's API as the dashboard calls it: every request sends the signed-in token.
// The token lives in this tab's sessionStorage only (never a URL, never a cookie), with a
// flag that says the tab is signed in (a hub without tokens signs in with none).

const KEY = "edgeloop.token";
// Signed in, apart from the token: a hub without tokens (--insecure-dev) gives none.
const SIGNED_IN = "edgeloop.signed-in";

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

export function signedInHere() {
  return sessionStorage.getItem(SIGNED_IN) === "1";
}

// The token to send ("" or null: none, for a hub without tokens); this tab is signed in.
export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
  sessionStorage.setItem(SIGNED_IN, "1");
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(SIGNED_IN);
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
