import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { getJson } from "./api.js";

// GET url as JSON; refetched when url changes. `reload` fetches again and keeps the shown data meanwhile.
export function useJson(url) {
  const [state, setState] = useState({ data: null, error: null, loading: Boolean(url) });
  const generation = useRef(0);
  const load = useCallback(() => {
    if (!url) return Promise.resolve();
    const mine = ++generation.current;
    setState((previous) => ({ ...previous, loading: true }));
    return getJson(url).then(
      (data) => mine === generation.current && setState({ data, error: null, loading: false }),
      (error) => mine === generation.current && setState((previous) => ({ ...previous, error, loading: false })),
    );
  }, [url]);
  useEffect(() => {
    setState({ data: null, error: null, loading: Boolean(url) });
    load();
    return () => { generation.current++; };
  }, [load]);
  return { ...state, reload: load };
}

export const POLL_MS = 2000;
export const LIVE_STATUSES = new Set(["PENDING", "RUNNING"]);

// Calls `poll` every POLL_MS while `active`; one poll at a time.
export function usePolling(poll, active) {
  useEffect(() => {
    if (!active) return undefined;
    let stopped = false;
    let timer;
    const tick = async () => {
      await poll();
      if (!stopped) timer = setTimeout(tick, POLL_MS);
    };
    timer = setTimeout(tick, POLL_MS);
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [poll, active]);
}
