import { formatNumber } from "../format.js";

const FOLDED_ABOVE = 15;

export function ErrorLine({ error }) {
  if (!error) return null;
  return <p class="error" role="alert">{error.status ? `${error.status}: ` : ""}{error.message}</p>;
}

export function Status({ status }) {
  return <span class={`status status-${String(status || "").toLowerCase()}`}>{status}</span>;
}

// Any JSON value the API returns for provenance, shown without knowing its shape in advance.
export function Value({ value }) {
  if (value === null || value === undefined || value === "") return <span class="muted">—</span>;
  if (typeof value === "number") return <>{formatNumber(value)}</>;
  if (typeof value !== "object") return <>{String(value)}</>;
  if (Array.isArray(value)) {
    if (!value.length) return <span class="muted">none</span>;
    if (value.every((item) => item && typeof item === "object" && !Array.isArray(item))) {
      const keys = [...new Set(value.flatMap((item) => Object.keys(item)))];
      return (
        <table class="inner">
          <thead><tr>{keys.map((key) => <th>{key}</th>)}</tr></thead>
          <tbody>{value.map((item) => <tr>{keys.map((key) => <td><Value value={item[key]} /></td>)}</tr>)}</tbody>
        </table>
      );
    }
    return <>{value.map((item) => String(item)).join(", ")}</>;
  }
  const entries = Object.entries(value);
  if (!entries.length) return <span class="muted">none</span>;
  const table = (
    <table class="inner kv">
      <tbody>{entries.map(([key, item]) => <tr><th>{key}</th><td><Value value={item} /></td></tr>)}</tbody>
    </table>
  );
  // Long lists (an environment's installed packages) stay folded until asked for.
  return entries.length > FOLDED_ABOVE ? <details><summary>{entries.length} entries</summary>{table}</details> : table;
}
