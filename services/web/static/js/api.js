// The edge's HTTP API, as the dashboard calls it: the session cookie authenticates (the
// browser sends it; JavaScript never sees it), X-CSRF-Token accompanies every change, and
// errors arrive as AIP-193 JSON, which becomes an ApiError with the ErrorInfo reason.

let csrfToken = "";

export class ApiError extends Error {
  constructor(httpStatus, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${httpStatus}`);
    this.httpStatus = httpStatus;
    this.status = error.status || "UNKNOWN";
    const info = (error.details || []).find((d) => String(d["@type"]).endsWith("ErrorInfo"));
    this.reason = info ? info.reason : "";
    this.metadata = (info && info.metadata) || {};
  }
}

export async function call(method, path, body) {
  const headers = {accept: "application/json"};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET") headers["x-csrf-token"] = csrfToken;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, {error: {status: "UNAVAILABLE", message: "The server cannot be reached."}});
  }
  if (response.status === 204) return {};
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new ApiError(response.status, data);
    if (err.status === "UNAUTHENTICATED" && onSignedOut) onSignedOut(err);
    throw err;
  }
  return data;
}

export const get = (path, query) => call("GET", withQuery(path, query));
export const post = (path, body = {}) => call("POST", path, body);
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);

export function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

// Every page of a list, concatenated: `field` names the repeated field of the response.
export async function listAll(path, field, query = {}, limit = 20) {
  const items = [];
  let token = "";
  for (let page = 0; page < limit; page += 1) {
    const data = await get(path, {...query, pageToken: token});
    items.push(...(data[field] || []));
    token = data.nextPageToken || "";
    if (!token) break;
  }
  return items;
}

let onSignedOut = null;

export function whenSignedOut(handler) {
  onSignedOut = handler;
}

// --- the session cookie --------------------------------------------------------------------

async function authFetch(method, path, body) {
  const headers = {accept: "application/json"};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET") headers["x-csrf-token"] = csrfToken;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export async function signIn(apiKey) {
  const data = await authFetch("POST", "/auth/login", {apiKey});
  csrfToken = data.csrfToken;
  return data.profile;
}

// The signed-in user, or null: the cookie is HttpOnly, so ask the edge.
export async function restore() {
  try {
    const data = await authFetch("GET", "/auth/session");
    csrfToken = data.csrfToken;
  } catch (err) {
    if (err.status === "UNAUTHENTICATED") return null;
    throw err;
  }
  try {
    return await authFetch("GET", "/v1/users/me/profile");
  } catch (err) {
    if (err.status === "UNAUTHENTICATED") return null;  // e.g. the key was revoked
    throw err;
  }
}

export async function signOut() {
  await authFetch("POST", "/auth/logout").catch(() => {});
  csrfToken = "";
}
