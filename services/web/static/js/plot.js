// Small hand-written SVG charts: bars per item, with a label and a tooltip each.

import {h, svg} from "./dom.js";

// series: [{label, value, title, tone}] → a bar chart `height` px high, scaled to the max.
export function bars(title, series, {unit = "", height = 96, format = (v) => String(v)} = {}) {
  const width = Math.max(240, series.length * 18);
  const max = Math.max(1, ...series.map((s) => s.value));
  const gap = 4;
  const barWidth = Math.max(4, (width - gap * (series.length + 1)) / Math.max(1, series.length));
  const chart = svg("svg", {
    class: "plot", viewBox: `0 0 ${width} ${height + 16}`, role: "img",
    "aria-label": `${title}: ${series.map((s) => `${s.label} ${format(s.value)}${unit}`).join(", ")}`,
    preserveAspectRatio: "none",
  });
  chart.append(svg("line", {x1: 0, y1: height, x2: width, y2: height, class: "axis"}));
  series.forEach((s, i) => {
    const barHeight = Math.max(1, (s.value / max) * (height - 8));
    const x = gap + i * (barWidth + gap);
    const rect = svg("rect", {
      x, y: height - barHeight, width: barWidth, height: barHeight, rx: 2,
      class: `bar ${s.tone || ""}`,
    });
    rect.append(svg("title", {}, s.title || `${s.label}: ${format(s.value)}${unit}`));
    chart.append(rect);
  });
  return h("figure.plot-card", h("figcaption", h("span", title),
    h("span.muted", `max ${format(max)}${unit}`)), chart);
}
