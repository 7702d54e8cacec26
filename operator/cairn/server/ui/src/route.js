// Hash routes: #/runs?ns=..., #/run/<ns>/<id>, #/compare/<ns>?run=..., #/experiments?ns=...
// Pure: text in, route out, and back.

export function parseRoute(hash) {
  const text = (hash || "").replace(/^#/, "") || "/runs";
  const [path, queryText = ""] = text.split("?", 2);
  const segments = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(queryText);
  const [page = "runs", ...args] = segments;
  return { page, args, query };
}

export function routeHref(page, args = [], query = {}) {
  const path = [page, ...args].map(encodeURIComponent).join("/");
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") search.append(key, String(item));
    }
  }
  const text = search.toString();
  return `#/${path}${text ? "?" + text : ""}`;
}

// The filter box takes clauses of the API's syntax joined by "and" or ";".
export function splitFilter(text) {
  return (text || "").split(/\s+and\s+|;|\n/i).map((clause) => clause.trim()).filter(Boolean);
}
