// The UI's pure modules under node's test runner (tests/test_ui.py runs it): no browser, no server.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseRoute, routeHref, splitFilter } from "../src/route.js";
import { curveColumns, overlay } from "../src/series.js";
import { cellValue, defaultColumns, formatBytes, nextOrder, parseOrder } from "../src/format.js";

test("a route survives being written and read back", () => {
  const href = routeHref("compare", ["team a"], { run: ["r1", "r2"], key: "train/loss", x: "time", empty: "" });
  assert.equal(href, "#/compare/team%20a?run=r1&run=r2&key=train%2Floss&x=time");
  const route = parseRoute(href);
  assert.equal(route.page, "compare");
  assert.deepEqual(route.args, ["team a"]);
  assert.deepEqual(route.query.getAll("run"), ["r1", "r2"]);
  assert.equal(route.query.get("key"), "train/loss");
  assert.equal(parseRoute("").page, "runs");
  assert.deepEqual(parseRoute("#/run/ns/abc").args, ["ns", "abc"]);
});

test("the filter box splits on and, semicolons and new lines, not inside words", () => {
  assert.deepEqual(splitFilter("params.brand = x AND metrics.acc >= 0.9; status = RUNNING\ntags.a != b"),
    ["params.brand = x", "metrics.acc >= 0.9", "status = RUNNING", "tags.a != b"]);
  assert.deepEqual(splitFilter("  "), []);
});

test("curves align by step or by seconds since their first point", () => {
  const points = [[0, 100.5, 1.0, 1.0, 1.0], [10, 102.5, 0.5, 0.4, 0.6]];
  assert.deepEqual(curveColumns(points, "step"), [[0, 10], [1.0, 0.5]]);
  assert.deepEqual(curveColumns(points, "time"), [[0, 2], [1.0, 0.5]]);
  assert.deepEqual(curveColumns([], "time"), [[], []]);
});

test("overlaid curves share the sorted union of their x values, null where one has no point", () => {
  const data = overlay([[[0, 2, 10], [1, 2, 3]], [[1, 2], [5, 6]]]);
  assert.deepEqual(data, [[0, 1, 2, 10], [1, null, 2, 3], [null, 5, 6, null]]);
});

test("clicking a header orders by it, and again flips the direction", () => {
  assert.deepEqual(parseOrder(""), { key: "start_time", direction: "desc" });
  assert.equal(nextOrder("start_time desc", "params.lr"), "params.lr asc");
  assert.equal(nextOrder("params.lr asc", "params.lr"), "params.lr desc");
  assert.equal(nextOrder("params.lr desc", "params.lr"), "params.lr asc");
  assert.equal(nextOrder("params.lr asc", "metrics.loss"), "metrics.loss desc");
});

test("cells and default columns come from the run rows", () => {
  const runs = [
    { params: { lr: "0.1", b: "x" }, metrics: { loss: { value: 0.25, step: 3 } }, tags: { team: "nlp" } },
    { params: { a: "1" }, metrics: { acc: { value: 0.5, step: 1 } } },
  ];
  assert.equal(cellValue(runs[0], "params.lr"), "0.1");
  assert.equal(cellValue(runs[0], "metrics.loss"), "0.25");
  assert.equal(cellValue(runs[0], "tags.team"), "nlp");
  assert.equal(cellValue(runs[1], "metrics.loss"), "");
  assert.deepEqual(defaultColumns(runs, 2), ["params.a", "params.b", "metrics.acc", "metrics.loss"]);
  assert.equal(formatBytes(2048), "2.0 KiB");
  assert.equal(formatBytes(12), "12 B");
});
