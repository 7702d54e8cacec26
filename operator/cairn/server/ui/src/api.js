// The only module that talks to the server: relative URLs under api/v1, the pasted token as a Bearer header.

const TOKEN_KEY = "cairn.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function storeToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers() {
  const token = storedToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Listeners told when the server answers 401, so the shell can ask for a token.
const unauthorizedListeners = new Set();
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

// apiUrl("namespaces", ns, "runs", {filter: [...]}) -> "api/v1/namespaces/<ns>/runs?filter=..&filter=.."
export function apiUrl(...parts) {
  const query = typeof parts[parts.length - 1] === "object" ? parts.pop() : null;
  let url = "api/v1/" + parts.map((part) => String(part).split("/").map(encodeURIComponent).join("/")).join("/");
  if (query) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      for (const item of Array.isArray(value) ? value : [value]) {
        if (item !== undefined && item !== null && item !== "") search.append(key, String(item));
      }
    }
    const text = search.toString();
    if (text) url += "?" + text;
  }
  return url;
}

// A GET that fails before any answer (a kept-alive connection the server had just closed) is tried once more.
async function fetchOnceMore(url, signal) {
  try {
    return await fetch(url, { headers: headers(), signal });
  } catch (error) {
    if (signal?.aborted) throw error;
    return fetch(url, { headers: headers(), signal });
  }
}

async function request(url, signal) {
  const response = await fetchOnceMore(url, signal);
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body.error || body.detail || message;
    if (typeof message !== "string") message = JSON.stringify(message);
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) unauthorizedListeners.forEach((listener) => listener(message));
  throw new ApiError(response.status, message);
}

export async function getJson(url, signal) {
  return (await request(url, signal)).json();
}

// Downloads with the token: a plain link cannot carry an Authorization header.
export async function downloadWithToken(url, filename) {
  const blob = await (await request(url)).blob();
  const objectUrl = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = objectUrl;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(objectUrl), 10_000);
}
