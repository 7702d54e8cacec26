import { apiUrl } from "../api.js";
import { formatTime } from "../format.js";
import { useJson } from "../hooks.js";
import { routeHref } from "../route.js";
import { ErrorLine } from "./common.jsx";

export function ExperimentsPage({ namespace }) {
  const experiments = useJson(apiUrl("namespaces", namespace, "experiments"));
  return (
    <section>
      <h1>Experiments in {namespace}</h1>
      <ErrorLine error={experiments.error} />
      <table class="runs" id="experiments-table">
        <thead><tr><th>experiment</th><th>runs</th><th>last run started</th></tr></thead>
        <tbody>{(experiments.data?.experiments || []).map((item) => (
          <tr data-experiment={item.name}>
            <td><a href={routeHref("runs", [], { ns: namespace, exp: item.name })}>{item.name}</a></td>
            <td class="num">{item.runs}</td>
            <td>{formatTime(item.last_start_time)}</td>
          </tr>))}
        </tbody>
      </table>
    </section>
  );
}
