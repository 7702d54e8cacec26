import { useState } from "preact/hooks";
import { apiUrl } from "../api.js";
import { cellValue, defaultColumns, formatDuration, formatTime, nextOrder, parseOrder } from "../format.js";
import { LIVE_STATUSES, useJson, usePolling } from "../hooks.js";
import { routeHref, splitFilter } from "../route.js";
import { ErrorLine, Status } from "./common.jsx";

const PAGE_SIZE = 100;
const MAX_COMPARED = 10;

// The runs table: experiment and filter in the URL, sort by clicking a header (the API's order_by),
// live status while any shown run is pending or running.
export function RunsPage({ namespace, query }) {
  const experiment = query.get("exp") || "";
  const filterText = query.get("filter") || "";
  const order = query.get("sort") || "start_time desc";
  const chosenColumns = (query.get("cols") || "").split(",").map((column) => column.trim()).filter(Boolean);
  const pageToken = query.get("page") || "";
  const [selected, setSelected] = useState(new Set());

  const state = { ns: namespace, exp: experiment, filter: filterText, sort: order, cols: chosenColumns.join(",") };
  const go = (changes) => { location.hash = routeHref("runs", [], { ...state, ...changes }); };

  const experiments = useJson(apiUrl("namespaces", namespace, "experiments"));
  const runs = useJson(apiUrl("namespaces", namespace, "runs", {
    experiment, filter: splitFilter(filterText), order_by: order, page_size: PAGE_SIZE, page_token: pageToken,
  }));
  const rows = runs.data?.runs || [];
  usePolling(runs.reload, rows.some((run) => LIVE_STATUSES.has(run.status)));

  const columns = chosenColumns.length ? chosenColumns : defaultColumns(rows);
  const sorted = parseOrder(order);
  const header = (key, label) => (
    <th class="sortable" data-key={key} onClick={() => go({ sort: nextOrder(order, key), page: "" })}>
      {label}{sorted.key === key ? (sorted.direction === "asc" ? " ▲" : " ▼") : ""}
    </th>
  );
  const toggle = (id) => {
    const next = new Set(selected);
    if (next.has(id)) next.delete(id);
    else if (next.size < MAX_COMPARED) next.add(id);
    setSelected(next);
  };

  return (
    <section>
      <form class="toolbar" onSubmit={(event) => {
        event.preventDefault();
        const form = event.target.elements;
        go({ filter: form.filter.value.trim(), cols: form.cols.value.trim(), page: "" });
      }}>
        <label>experiment{" "}
          <select id="experiment" value={experiment} onChange={(event) => go({ exp: event.target.value, page: "" })}>
            <option value="">all</option>
            {(experiments.data?.experiments || []).map((item) => <option value={item.name}>{item.name}</option>)}
          </select>
        </label>
        <input id="filter" name="filter" class="wide" value={filterText} key={`f${filterText}`}
          placeholder="filter, e.g. params.lr = 0.1 and metrics.val_acc >= 0.9" />
        <input id="columns" name="cols" value={chosenColumns.join(", ")} key={`c${chosenColumns}`}
          placeholder="columns, e.g. params.lr, metrics.loss" />
        <button type="submit">Apply</button>
        <a class={`button ${selected.size >= 2 ? "" : "disabled"}`} id="compare-selected"
          href={selected.size >= 2 ? routeHref("compare", [namespace], { run: [...selected] }) : undefined}>
          Compare {selected.size || ""}
        </a>
      </form>
      <ErrorLine error={runs.error || experiments.error} />
      <p class="muted" id="runs-total">{runs.data ? `${runs.data.total} runs` : runs.loading ? "loading…" : ""}</p>
      <table class="runs" id="runs-table">
        <thead>
          <tr>
            <th />
            {header("name", "name")}
            <th>experiment</th>
            <th>status</th>
            {header("start_time", "started")}
            <th>duration</th>
            {columns.map((column) => header(column, column))}
          </tr>
        </thead>
        <tbody>
          {rows.map((run) => (
            <tr data-run-id={run.id} key={run.id}>
              <td><input type="checkbox" checked={selected.has(run.id)} onChange={() => toggle(run.id)} /></td>
              <td><a href={routeHref("run", [run.namespace || namespace, run.id])}>{run.name || run.id}</a></td>
              <td>{run.experiment}</td>
              <td><Status status={run.status} /></td>
              <td>{formatTime(run.start_time)}</td>
              <td>{run.start_time && run.end_time
                ? formatDuration((new Date(run.end_time) - new Date(run.start_time)) / 1000) : ""}</td>
              {columns.map((column) => <td class="num">{cellValue(run, column)}</td>)}
            </tr>
          ))}
        </tbody>
      </table>
      <p class="pager">
        {pageToken && <a href={routeHref("runs", [], { ...state })}>first page</a>}{" "}
        {runs.data?.next_page_token && <a href={routeHref("runs", [], { ...state, page: runs.data.next_page_token })}>
          next page</a>}
      </p>
    </section>
  );
}
