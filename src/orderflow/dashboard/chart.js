// Throughput over the last 24 hours, as the service counts it (GET /orders/throughput): the
// same on every instance and for every page, whenever it was opened. Minutes are summed into
// 96 bars of 15 minutes: shipped and failed stacked, submitted as a line.

import { api } from "./api.js";
import { $, plural, svg, timeOnly } from "./dom.js";

const MINUTE_MS = 60_000;
const BAR_MINUTES = 15;
const BARS = (24 * 60) / BAR_MINUTES;
const WIDTH = 300; // of the plot, in the SVG's units; each bar is WIDTH / BARS wide
const LEFT = 20;
const BASE = 110;

export async function refreshChart() {
  const answer = await api("GET", "/orders/throughput");
  const end = Date.parse(answer.to) + MINUTE_MS; // the end of the current minute
  const start = end - BARS * BAR_MINUTES * MINUTE_MS;
  const bars = Array.from({ length: BARS }, () => ({ submitted: 0, shipped: 0, failed: 0 }));
  const total = { submitted: 0, shipped: 0, failed: 0 };
  for (const minute of answer.minutes) {
    const at = Date.parse(minute.minute);
    if (at < start) continue;
    const bar = bars[Math.min(BARS - 1, Math.floor((at - start) / (BAR_MINUTES * MINUTE_MS)))];
    for (const kind of ["submitted", "shipped", "failed"]) {
      bar[kind] += minute[kind];
      total[kind] += minute[kind];
    }
  }
  draw(bars, start);
  for (const kind of ["submitted", "shipped", "failed"]) {
    $(`chart-${kind}`).textContent = String(total[kind]);
  }
  $("throughput-total").textContent = `${total.shipped} shipped in the last 24 hours`;
}

function draw(bars, start) {
  const peak = Math.max(4, ...bars.map((bar) => Math.max(bar.submitted, bar.shipped + bar.failed)));
  const scale = (count) => (count / peak) * 100;
  const step = WIDTH / BARS;
  const shapes = [];
  bars.forEach((bar, i) => {
    const x = LEFT + i * step;
    const from = timeOnly.format(start + i * BAR_MINUTES * MINUTE_MS);
    const title = svg("title", {}, `From ${from}: ${plural(bar.submitted, "order")} submitted,`
      + ` ${bar.shipped} shipped, ${bar.failed} failed`);
    const shipped = scale(bar.shipped);
    const failed = scale(bar.failed);
    shapes.push(svg("rect", { x, y: BASE - shipped, width: step * 0.8, height: shipped,
      class: "shipped", "data-count": bar.shipped }, title));
    if (bar.failed) {
      shapes.push(svg("rect", { x, y: BASE - shipped - failed, width: step * 0.8,
        height: failed, class: "failed", "data-count": bar.failed }));
    }
  });
  const line = bars.map((bar, i) => `${LEFT + (i + 0.4) * step},${BASE - scale(bar.submitted)}`);
  $("chart").replaceChildren(
    svg("line", { x1: LEFT - 2, x2: LEFT + WIDTH, y1: BASE, y2: BASE, class: "axis" }),
    svg("text", { x: LEFT - 4, y: 14, "text-anchor": "end" }, String(peak)),
    svg("text", { x: LEFT - 4, y: BASE, "text-anchor": "end" }, "0"),
    svg("text", { x: LEFT, y: 126 }, "24 h ago"),
    svg("text", { x: LEFT + WIDTH, y: 126, "text-anchor": "end" }, "now"),
    ...shapes,
    svg("polyline", { points: line.join(" "), class: "submitted" }),
  );
}
