// Pure formatting of what the API returns.

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function formatNumber(value) {
  if (value === null || value === undefined || value === "") return "";
  const number = Number(value);
  if (!Number.isFinite(number)) return String(value);
  if (Number.isInteger(number)) return String(number);
  return Math.abs(number) >= 1e-3 && Math.abs(number) < 1e6 ? number.toPrecision(6).replace(/\.?0+$/, "") : number.toExponential(4);
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(Number(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

export function formatBytes(size) {
  if (size === null || size === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(size);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit ? `${value.toFixed(1)} ${units[unit]}` : `${value} B`;
}

// A run row's value for a column "params.lr", "metrics.loss", "tags.team".
export function cellValue(run, column) {
  const dot = column.indexOf(".");
  const group = column.slice(0, dot);
  const key = column.slice(dot + 1);
  if (group === "params") return run.params?.[key] ?? "";
  if (group === "tags") return run.tags?.[key] ?? "";
  if (group === "metrics") return formatNumber(run.metrics?.[key]?.value);
  return "";
}

// Default columns: the params and metrics the shown runs have, at most `limit` of each.
export function defaultColumns(runs, limit = 6) {
  const params = new Set();
  const metrics = new Set();
  for (const run of runs) {
    Object.keys(run.params || {}).forEach((key) => params.add(key));
    Object.keys(run.metrics || {}).forEach((key) => metrics.add(key));
  }
  return [
    ...[...params].sort().slice(0, limit).map((key) => `params.${key}`),
    ...[...metrics].sort().slice(0, limit).map((key) => `metrics.${key}`),
  ];
}

// "metrics.loss desc" -> {key: "metrics.loss", direction: "desc"}
export function parseOrder(text) {
  const [key = "start_time", direction = "desc"] = (text || "start_time desc").trim().split(/\s+/);
  return { key, direction: direction.toLowerCase() === "asc" ? "asc" : "desc" };
}

// Clicking a header: the same key flips its direction, another key starts descending for metrics, ascending otherwise.
export function nextOrder(current, key) {
  const order = parseOrder(current);
  if (order.key === key) return `${key} ${order.direction === "asc" ? "desc" : "asc"}`;
  return `${key} ${key.startsWith("metrics.") || key === "start_time" ? "desc" : "asc"}`;
}
