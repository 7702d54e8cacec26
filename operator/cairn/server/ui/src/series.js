// Pure: metric points from the API into the column arrays uPlot draws.

export const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

// points: [[step, ts, value, min, max], ...] -> [xs, ys], x by step or by seconds since the first point.
export function curveColumns(points, alignBy) {
  const xs = new Array(points.length);
  const ys = new Array(points.length);
  const t0 = points.length ? points[0][1] : 0;
  for (let i = 0; i < points.length; i++) {
    const point = points[i];
    xs[i] = alignBy === "time" ? point[1] - t0 : point[0];
    ys[i] = point[2];
  }
  return [xs, ys];
}

// Several [xs, ys] curves on one x axis: the sorted union of every x, null where a curve has no point.
export function overlay(curves) {
  const allX = new Set();
  for (const [xs] of curves) for (const x of xs) allX.add(x);
  const xs = Float64Array.from(allX).sort();
  const index = new Map();
  xs.forEach((x, i) => index.set(x, i));
  const columns = curves.map(([curveX, curveY]) => {
    const ys = new Array(xs.length).fill(null);
    for (let i = 0; i < curveX.length; i++) ys[index.get(curveX[i])] = curveY[i];
    return ys;
  });
  return [Array.from(xs), ...columns];
}
