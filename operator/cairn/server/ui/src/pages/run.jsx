import { useMemo, useState } from "preact/hooks";
import { apiUrl, downloadWithToken, storedToken } from "../api.js";
import { Chart } from "../chart.jsx";
import { formatBytes, formatDuration, formatNumber, formatTime } from "../format.js";
import { LIVE_STATUSES, useJson, usePolling } from "../hooks.js";
import { routeHref } from "../route.js";
import { curveColumns } from "../series.js";
import { ErrorLine, Status, Value } from "./common.jsx";

const MAX_POINTS = 2000;
const CURVES_SHOWN = 12;

function MetricCurve({ namespace, runId, metricKey, version }) {
  const history = useJson(apiUrl("namespaces", namespace, "runs", runId, "metrics", metricKey,
    { max_points: MAX_POINTS, v: version }));
  const data = useMemo(() => history.data && curveColumns(history.data.points, "step"), [history.data]);
  if (history.error) return <ErrorLine error={history.error} />;
  if (!data) return <div class="chart loading">{metricKey}…</div>;
  return <Chart title={metricKey} data={data} labels={[metricKey]} xLabel="step" />;
}

function ArtifactLink({ url, path }) {
  // Without a token the browser downloads the link itself; with one, fetch it so the header goes along.
  const click = (event) => {
    if (!storedToken()) return;
    event.preventDefault();
    downloadWithToken(url, path.split("/").pop());
  };
  return <a href={url} download={path.split("/").pop()} onClick={click} class="artifact">{path}</a>;
}

export function RunPage({ namespace, runId }) {
  const run = useJson(apiUrl("namespaces", namespace, "runs", runId));
  const artifacts = useJson(apiUrl("namespaces", namespace, "runs", runId, "artifacts"));
  const live = LIVE_STATUSES.has(run.data?.status);
  const [polls, setPolls] = useState(0);
  usePolling(async () => {
    await run.reload();
    setPolls((count) => count + 1);
  }, live);
  const [allCurves, setAllCurves] = useState(false);

  if (run.error) return <ErrorLine error={run.error} />;
  if (!run.data) return <p class="muted">loading…</p>;
  const detail = run.data;
  const keys = detail.metric_keys || Object.keys(detail.metrics || {});
  const shownKeys = allCurves ? keys : keys.slice(0, CURVES_SHOWN);
  const provenance = {
    code: detail.code, image: detail.image, datasets: detail.datasets, environment: detail.environment,
    hardware: detail.hardware, attempts: detail.attempts, resumes: detail.resumes, ingest: detail.ingest,
  };
  return (
    <section class="run">
      <h1>{detail.name || detail.id} <Status status={detail.status} /></h1>
      <p class="muted">
        {detail.id} · experiment <a href={routeHref("runs", [], { ns: namespace, exp: detail.experiment })}>
          {detail.experiment}</a> · started {formatTime(detail.start_time)}
        {detail.end_time && <> · ended {formatTime(detail.end_time)}</>}
        {detail.duration_seconds != null && <> · {formatDuration(detail.duration_seconds)}</>}
        {detail.exit_code != null && <> · exit code {detail.exit_code}</>}
      </p>
      <div class="columns">
        <div>
          <h2>Params</h2>
          <Value value={detail.params} />
          <h2>Latest metrics</h2>
          <table class="inner kv" id="latest-metrics"><tbody>
            {Object.entries(detail.metrics || {}).map(([key, point]) => (
              <tr><th>{key}</th><td>{formatNumber(point.value)}</td><td class="muted">step {point.step}</td></tr>))}
          </tbody></table>
          <h2>Tags</h2>
          <Value value={detail.tags} />
        </div>
        <div>
          <h2>Provenance</h2>
          <table class="inner kv" id="provenance"><tbody>
            {Object.entries(provenance).map(([key, value]) => <tr><th>{key}</th><td><Value value={value} /></td></tr>)}
          </tbody></table>
        </div>
      </div>
      <h2>Curves</h2>
      <p class="muted">drag across a chart to zoom, double-click to zoom out</p>
      <div class="charts">
        {shownKeys.map((key) => (
          <MetricCurve namespace={namespace} runId={runId} metricKey={key} version={live ? polls : "final"} />))}
      </div>
      {keys.length > shownKeys.length && (
        <button onClick={() => setAllCurves(true)}>show all {keys.length} curves</button>)}
      <h2>Artifacts</h2>
      <ErrorLine error={artifacts.error} />
      <table class="inner" id="artifacts"><thead><tr><th>path</th><th>kind</th><th>size</th><th>sha256</th></tr></thead>
        <tbody>{(artifacts.data?.artifacts || []).map((artifact) => (
          <tr>
            <td><ArtifactLink path={artifact.path}
              url={apiUrl("namespaces", namespace, "runs", runId, "artifacts", artifact.path)} /></td>
            <td>{artifact.kind}</td><td>{formatBytes(artifact.size)}</td>
            <td class="mono">{(artifact.sha256 || "").slice(0, 16)}</td>
          </tr>))}
        </tbody>
      </table>
    </section>
  );
}
