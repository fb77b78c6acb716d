// Tool calls across the workspace's runs: per tool, how often, how often it failed, how
// long it took; and the latest calls with their outcome.

import * as api from "../api.js";
import {ago, badge, clear, h, ms, num, pretty} from "../dom.js";
import {bars} from "../plot.js";

export function median(values) {
  if (!values.length) return null;
  const sorted = values.slice().sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function render() {
  const el = h("section.page", {"data-testid": "tools-page"},
    h("div.page-head", h("div", h("h1", "Tool calls"),
      h("p.muted", "Every tool call the runs of this workspace made, newest first."))));
  const body = h("div", h("p.muted", "Loading…"));
  el.append(body);
  let destroyed = false;

  (async () => {
    let calls;
    try {
      calls = await api.listAll("/v1/sessions/-/runs/-/toolCalls", "toolCalls", {pageSize: 1000}, 5);
    } catch (err) {
      clear(body, h("p.error", err.message));
      return;
    }
    if (destroyed) return;
    const byTool = new Map();
    for (const c of calls) {
      const entry = byTool.get(c.tool) || {tool: c.tool, count: 0, failed: 0, durations: []};
      entry.count += 1;
      if (c.state === "FAILED") entry.failed += 1;
      if (c.endTime) entry.durations.push(Number(c.durationMs || 0));
      byTool.set(c.tool, entry);
    }
    const tools = [...byTool.values()].sort((a, b) => b.count - a.count);
    clear(body,
      calls.length ? null : h("div.empty-state", h("h2", "No tool calls yet"),
        h("p.muted", "When a run calls a tool, it shows here with its arguments, result and duration.")),
      tools.length ? h("div.run-grid",
        h("div.card.table-card", h("h2.card-title", "By tool"),
          h("table.table", {"data-testid": "tool-stats"},
            h("thead", h("tr", h("th", "Tool"), h("th.num", "Calls"), h("th.num", "Failures"),
              h("th.num", "Median"), h("th.num", "Slowest"))),
            h("tbody", tools.map((t) => h("tr", {dataset: {tool: t.tool}},
              h("td", h("code", t.tool)),
              h("td.num", num(t.count)),
              h("td.num", t.failed ? h("span.bad-text", num(t.failed)) : "0"),
              h("td.num", {dataset: {col: "median"}}, ms(median(t.durations))),
              h("td.num", ms(t.durations.length ? Math.max(...t.durations) : null))))))),
        bars("Median duration per tool", tools.slice(0, 30).map((t) => ({
          label: t.tool, value: median(t.durations) || 0, title: `${t.tool}: ${ms(median(t.durations))}`,
          tone: t.failed ? "warn" : "",
        })), {format: (v) => ms(v)})) : null,
      calls.length ? h("div.card.table-card", h("h2.card-title", "Latest calls"),
        h("table.table.calls-table",
          h("thead", h("tr", h("th", "Tool"), h("th", "Outcome"), h("th.num", "Duration"),
            h("th", "When"), h("th", "Run"))),
          h("tbody", calls.slice(0, 200).map((c) => {
            const run = c.name.split("/toolCalls/")[0];
            return h("tr",
              h("td", h("details.inline", h("summary", h("code", c.tool)),
                h("div.kv", h("div.k", "Arguments"), h("pre.code", pretty(c.argumentsJson))),
                h("div.kv", h("div.k", c.state === "FAILED" ? "Error" : "Result"), h("pre.code", pretty(c.result || ""))))),
              h("td", badge(c.state), c.errorCode ? h("code.small", ` ${c.errorCode}`) : null),
              h("td.num", c.endTime ? ms(Number(c.durationMs || 0)) : "—"),
              h("td", ago(c.startTime)),
              h("td", h("a.mono.small", {href: `/${run}`}, run.split("/")[3].slice(0, 8))));
          })))) : null);
  })();
  return {el, destroy: () => { destroyed = true; }};
}
