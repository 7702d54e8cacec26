import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { PALETTE } from "./series.js";

// One uPlot chart: drag to zoom on x, double-click to zoom out. `data` is [xs, ys1, ys2, ...].
// Its element carries data-drawn-ms, the page's clock when it first drew: what tests and the benchmark read.
export function Chart({ title, data, labels, xLabel }) {
  const box = useRef(null);
  useEffect(() => {
    const element = box.current;
    const width = Math.max(320, element.clientWidth || 640);
    const options = {
      title,
      width,
      height: 260,
      scales: { x: { time: false } },
      axes: [{ label: xLabel }, {}],
      series: [
        { label: xLabel },
        ...labels.map((label, i) => ({ label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true })),
      ],
      hooks: {
        draw: [() => {
          if (!element.dataset.drawnMs) element.dataset.drawnMs = String(Math.round(performance.now()));
        }],
      },
    };
    delete element.dataset.drawnMs;
    const plot = new uPlot(options, data, element);
    const resize = () => plot.setSize({ width: Math.max(320, element.clientWidth), height: 260 });
    window.addEventListener("resize", resize);
    return () => {
      window.removeEventListener("resize", resize);
      plot.destroy();
    };
  }, [data, title, xLabel, labels.join("\u0000")]);
  return <div class="chart" ref={box} data-series={labels.length} data-points={data[0].length} />;
}
