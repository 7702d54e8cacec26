import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { onUnauthorized, storedToken, storeToken } from "./api.js";
import { parseRoute, routeHref } from "./route.js";
import { RunsPage } from "./pages/runs.jsx";
import { RunPage } from "./pages/run.jsx";
import { ComparePage } from "./pages/compare.jsx";
import { ExperimentsPage } from "./pages/experiments.jsx";
import "./style.css";

const NAMESPACE_KEY = "cairn.namespace";

function useHash() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const changed = () => setHash(location.hash);
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return hash;
}

// Asked for when the API answers 401: a Kubernetes token kept for this browser tab only.
function TokenBox({ reason, onSaved }) {
  const [token, setToken] = useState("");
  const save = (event) => {
    event.preventDefault();
    storeToken(token.trim());
    onSaved();
  };
  return (
    <form class="token-box" id="token-box" onSubmit={save}>
      <p>The server wants a Kubernetes token ({reason}). Paste one, e.g. from <code>kubectl create token NAME</code>;
        it stays in this tab's session storage.</p>
      <input type="password" name="token" placeholder="bearer token" value={token}
        onInput={(event) => setToken(event.target.value)} />
      <button type="submit">Use token</button>
    </form>
  );
}

function App() {
  const route = parseRoute(useHash());
  const [unauthorized, setUnauthorized] = useState(null);
  const [reloadKey, setReloadKey] = useState(0);
  useEffect(() => onUnauthorized((message) => setUnauthorized(message)), []);

  const namespace = route.query.get("ns") || route.args[0] || localStorage.getItem(NAMESPACE_KEY) || "default";
  useEffect(() => localStorage.setItem(NAMESPACE_KEY, namespace), [namespace]);
  const tokenSaved = () => {
    setUnauthorized(null);
    setReloadKey((key) => key + 1);
  };

  let page;
  if (route.page === "run") page = <RunPage namespace={route.args[0]} runId={route.args[1]} />;
  else if (route.page === "compare") page = <ComparePage namespace={route.args[0]} query={route.query} />;
  else if (route.page === "experiments") page = <ExperimentsPage namespace={namespace} />;
  else page = <RunsPage namespace={namespace} query={route.query} />;

  return (
    <>
      <header>
        <a class="brand" href={routeHref("runs", [], { ns: namespace })}>Cairn</a>
        <nav>
          <a href={routeHref("runs", [], { ns: namespace })} class={route.page === "runs" ? "active" : ""}>Runs</a>
          <a href={routeHref("experiments", [], { ns: namespace })}
            class={route.page === "experiments" ? "active" : ""}>Experiments</a>
        </nav>
        <form class="namespace" onSubmit={(event) => {
          event.preventDefault();
          location.hash = routeHref(route.page === "experiments" ? "experiments" : "runs", [],
            { ns: event.target.elements.ns.value.trim() || "default" });
        }}>
          <label>namespace <input name="ns" id="namespace" value={namespace} key={namespace} /></label>
        </form>
        {storedToken() && <button class="link" onClick={() => { storeToken(""); location.reload(); }}>forget token</button>}
      </header>
      {unauthorized !== null && <TokenBox reason={unauthorized} onSaved={tokenSaved} />}
      <main key={reloadKey}>{page}</main>
    </>
  );
}

render(<App />, document.getElementById("app"));
