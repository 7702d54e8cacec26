import { useEffect, useState } from "preact/hooks";
import { apiUrl, getJson } from "../api.js";
import { Chart } from "../chart.jsx";
import { useJson } from "../hooks.js";
import { routeHref } from "../route.js";
import { curveColumns, overlay, PALETTE } from "../series.js";
import { ErrorLine, Status } from "./common.jsx";

const MAX_POINTS = 2000;

// Every run's curve of one key, fetched in parallel and overlaid on one chart.
function OverlaidCurve({ namespace, runs, metricKey, alignBy }) {
  const [state, setState] = useState({ histories: null, error: null });
  const ids = runs.map((run) => run.id).join(",");
  useEffect(() => {
    let current = true;
    setState({ histories: null, error: null });
    Promise.all(runs.map((run) => getJson(apiUrl("namespaces", namespace, "runs", run.id, "metrics", metricKey,
      { max_points: MAX_POINTS })))).then(
      (histories) => current && setState({ histories, error: null }),
      (error) => current && setState({ histories: null, error }),
    );
    return () => { current = false; };
  }, [namespace, ids, metricKey]);
  if (state.error) return <ErrorLine error={state.error} />;
  if (!state.histories) return <div class="chart loading">{metricKey}…</div>;
  const data = overlay(state.histories.map((history) => curveColumns(history.points, alignBy)));
  return (
    <Chart title={metricKey} data={data} labels={runs.map((run) => run.name || run.id)}
      xLabel={alignBy === "time" ? "seconds since the run's first point" : "step"} />
  );
}

export function ComparePage({ namespace, query }) {
  const runIds = query.getAll("run");
  const alignBy = query.get("x") === "time" ? "time" : "step";
  const chosenKeys = query.getAll("key");
  const compare = useJson(apiUrl("namespaces", namespace, "compare", { run: runIds }));
  const go = (changes) => {
    location.hash = routeHref("compare", [namespace], { run: runIds, key: chosenKeys, x: alignBy, ...changes });
  };

  if (compare.error) return <ErrorLine error={compare.error} />;
  if (!compare.data) return <p class="muted">loading…</p>;
  const { runs, params_differing: differing, metric_keys: metricKeys } = compare.data;
  const keys = chosenKeys.length ? chosenKeys : metricKeys.slice(0, 4);
  return (
    <section class="compare">
      <h1>Compare {runs.length} runs</h1>
      <table class="inner" id="compare-runs">
        <thead><tr><th /><th>run</th><th>status</th>{Object.keys(differing).map((param) => <th>{param}</th>)}</tr></thead>
        <tbody>{runs.map((run, i) => (
          <tr>
            <td><span class="swatch" style={{ background: PALETTE[i % PALETTE.length] }} /></td>
            <td><a href={routeHref("run", [namespace, run.id])}>{run.name || run.id}</a></td>
            <td><Status status={run.status} /></td>
            {Object.keys(differing).map((param) => <td>{differing[param][run.id] ?? ""}</td>)}
          </tr>))}
        </tbody>
      </table>
      {!Object.keys(differing).length && <p class="muted">the runs' params are the same</p>}
      <div class="toolbar">
        <label>x axis{" "}
          <select id="align" value={alignBy} onChange={(event) => go({ x: event.target.value })}>
            <option value="step">step</option>
            <option value="time">time</option>
          </select>
        </label>
        <label>metrics{" "}
          <select id="keys" multiple size={Math.min(6, metricKeys.length)} onChange={(event) =>
            go({ key: [...event.target.selectedOptions].map((option) => option.value) })}>
            {metricKeys.map((key) => <option value={key} selected={keys.includes(key)}>{key}</option>)}
          </select>
        </label>
      </div>
      <div class="charts">
        {keys.map((key) => (
          <OverlaidCurve key={`${key}/${alignBy}`} namespace={namespace} runs={runs} metricKey={key}
            alignBy={alignBy} />))}
      </div>
    </section>
  );
}
