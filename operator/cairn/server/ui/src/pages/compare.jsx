import { useEffect, useMemo, useState } from "preact/hooks";
import { apiUrl, getJson } from "../api.js";
import { Chart } from "../chart.jsx";
import { useJson } from "../hooks.js";
import { routeHref } from "../route.js";
import { curveColumns, overlay, PALETTE } from "../series.js";
import { ErrorLine, Status } from "./common.jsx";

const MAX_POINTS = 2000;

// Every run's curve of one key, fetched in parallel and overlaid on one chart; drawn once the labels
// (the runs' names, from the compare call running alongside) are known.
function OverlaidCurve({ namespace, runIds, labels, metricKey, alignBy }) {
  const [state, setState] = useState({ histories: null, error: null });
  useEffect(() => {
    let current = true;
    setState({ histories: null, error: null });
    Promise.all(runIds.map((id) => getJson(apiUrl("namespaces", namespace, "runs", id, "metrics", metricKey,
      { max_points: MAX_POINTS })))).then(
      (histories) => current && setState({ histories, error: null }),
      (error) => current && setState({ histories: null, error }),
    );
    return () => { current = false; };
  }, [namespace, runIds.join(","), metricKey]);
  const data = useMemo(() => state.histories
    && overlay(state.histories.map((history) => curveColumns(history.points, alignBy))), [state.histories, alignBy]);
  if (state.error) return <ErrorLine error={state.error} />;
  if (!data || !labels) return <div class="chart loading">{metricKey}…</div>;
  return (
    <Chart title={metricKey} data={data} labels={labels}
      xLabel={alignBy === "time" ? "seconds since the run's first point" : "step"} />
  );
}

function RunsTable({ namespace, runs, differing }) {
  const params = Object.keys(differing);
  return (
    <>
      <table class="inner" id="compare-runs">
        <thead><tr><th /><th>run</th><th>status</th>{params.map((param) => <th>{param}</th>)}</tr></thead>
        <tbody>{runs.map((run, i) => (
          <tr>
            <td><span class="swatch" style={{ background: PALETTE[i % PALETTE.length] }} /></td>
            <td><a href={routeHref("run", [namespace, run.id])}>{run.name || run.id}</a></td>
            <td><Status status={run.status} /></td>
            {params.map((param) => <td>{differing[param][run.id] ?? ""}</td>)}
          </tr>))}
        </tbody>
      </table>
      {!params.length && <p class="muted">the runs' params are the same</p>}
    </>
  );
}

// Keys named in the URL are fetched at once, beside the compare call; otherwise the first common keys.
export function ComparePage({ namespace, query }) {
  const runIds = query.getAll("run");
  const alignBy = query.get("x") === "time" ? "time" : "step";
  const chosenKeys = query.getAll("key");
  const compare = useJson(apiUrl("namespaces", namespace, "compare", { run: runIds }));
  const go = (changes) => {
    location.hash = routeHref("compare", [namespace], { run: runIds, key: chosenKeys, x: alignBy, ...changes });
  };
  const data = compare.data;
  const metricKeys = data?.metric_keys || [];
  const keys = chosenKeys.length ? chosenKeys : metricKeys.slice(0, 4);
  const names = data && new Map(data.runs.map((run) => [run.id, run.name || run.id]));
  const labels = names && runIds.map((id) => names.get(id) || id);
  return (
    <section class="compare">
      <h1>Compare {runIds.length} runs</h1>
      <ErrorLine error={compare.error} />
      {data ? <RunsTable namespace={namespace} runs={data.runs} differing={data.params_differing} />
        : <p class="muted">loading…</p>}
      <div class="toolbar">
        <label>x axis{" "}
          <select id="align" value={alignBy} onChange={(event) => go({ x: event.target.value })}>
            <option value="step">step</option>
            <option value="time">time</option>
          </select>
        </label>
        <label>metrics{" "}
          <select id="keys" multiple size={Math.max(2, Math.min(6, metricKeys.length))} onChange={(event) =>
            go({ key: [...event.target.selectedOptions].map((option) => option.value) })}>
            {metricKeys.map((key) => <option value={key} selected={keys.includes(key)}>{key}</option>)}
          </select>
        </label>
      </div>
      <div class="charts">
        {keys.map((key) => (
          <OverlaidCurve key={`${key}/${alignBy}`} namespace={namespace} runIds={runIds} labels={labels}
            metricKey={key} alignBy={alignBy} />))}
      </div>
    </section>
  );
}
