// The run inspector: everything a run's event log says — a timeline of every event (a
// virtualized list, so 10,000 events cost the rows on screen), the reply per attempt, tool
// calls, usage, timings and how it ended — live while the run goes on.

import * as api from "../api.js";
import {badge, clear, clock, copyText, download, h, isActive, ms, notFound, num, pretty, stamp, uuid} from "../dom.js";
import {kindOf, payloadOf, RunModel, summary, TERMINAL} from "../events.js";
import {LiveStream} from "../live.js";

const ROW = 32;  // px: every timeline row is one line, so the list is an index, not a layout
const OVERSCAN = 12;
const FIRST_PAGE = 1000;
const PAGE = 5000;

export function render(app, [sessionId, runId], query) {
  const name = `sessions/${sessionId}/runs/${runId}`;
  const model = new RunModel(name);
  const wanted = Number(query.get("event") || 0);
  const el = h("section.page.run-page", {"data-testid": "run-page"}, h("p.muted", "Loading…"));
  const ui = {};
  let run = null;
  let stream = null;
  let destroyed = false;
  let loaded = false;
  let selected = 0;
  let scheduled = false;
  const hidden = new Set();  // event types filtered out
  let visible = [];  // indexes into model.events that pass the filter

  // --- layout ----------------------------------------------------------------------------

  function build(session) {
    ui.pill = h("span.live-pill", {role: "status", "data-testid": "live-state"}, "Loading…");
    ui.badge = h("span");
    ui.cancel = app.can("member")
      ? h("button.danger-ghost", {type: "button", hidden: true, "data-testid": "cancel-run", onclick: cancel}, "Cancel run")
      : null;
    ui.stats = h("dl.stats", {"data-testid": "run-stats"});
    ui.ending = h("div.ending");
    ui.output = h("div.output", {"data-testid": "run-output"});
    ui.tools = h("div.tool-calls", {"data-testid": "tool-calls"});
    ui.approvals = h("div.approvals", {"data-testid": "approvals", hidden: true});
    ui.filters = h("div.filters", {role: "group", "aria-label": "Filter by event type"});
    ui.spacer = h("div.timeline-spacer");
    ui.rows = h("div.timeline-rows");
    ui.viewport = h("div.timeline", {
      tabindex: "0", role: "listbox", "aria-label": "Run events", "data-testid": "timeline",
      onscroll: schedule, onkeydown: keys,
    }, ui.spacer, ui.rows);
    ui.detail = h("div.event-detail", {"data-testid": "event-detail"},
      h("p.muted", "Select an event to see all of it."));
    ui.count = h("span.muted.small");
    clear(el,
      h("nav.crumbs", {"aria-label": "Breadcrumb"},
        h("a", {href: "/sessions"}, "Sessions"), h("span", "/"),
        h("a", {href: `/sessions/${sessionId}`}, session ? session.title || "Untitled session" : sessionId),
        h("span", "/"), h("span", `Run ${runId.slice(0, 8)}`)),
      h("div.page-head",
        h("div", h("h1", h("span", `Run ${runId.slice(0, 8)}`), ui.badge),
          h("p.muted.small.mono", name)),
        h("div.head-actions", ui.pill, ui.cancel,
          h("button.ghost", {type: "button", "data-testid": "export", onclick: exportJson}, "Export JSON"))),
      ui.stats,
      ui.ending,
      ui.approvals,
      h("div.run-grid",
        h("div.card", h("h2.card-title", "Reply"), ui.output),
        h("div.card", h("h2.card-title", "Tool calls"), ui.tools)),
      h("div.card.timeline-card",
        h("div.card-head", h("h2.card-title", "Timeline"), ui.count),
        ui.filters,
        h("div.timeline-head", h("span", "#"), h("span", "+time"), h("span", "at"),
          h("span", "type"), h("span", "what")),
        ui.viewport,
        ui.detail));
  }

  // --- data ------------------------------------------------------------------------------

  async function init() {
    // The run, its session and the first page of events at once: the first rows paint
    // after one round trip, not three.
    const firstPage = api.get(`/v1/${name}/events`, {pageSize: FIRST_PAGE}).catch((err) => err);
    const sessionFetch = api.get(`/v1/sessions/${sessionId}`).catch(() => null);
    try {
      run = await api.get(`/v1/${name}`);
    } catch (err) {
      if (!destroyed) {
        clear(el, err.status === "NOT_FOUND" || err.status === "INVALID_ARGUMENT"
          ? notFound("This run does not exist, or it is not in this workspace.")
          : h("p.error", err.message));
      }
      return;
    }
    const session = await sessionFetch;
    if (destroyed) return;
    build(session);
    paintRun();
    let data = await firstPage;
    for (;;) {
      if (data instanceof Error) throw data;
      if (destroyed) return;
      for (const event of data.events || []) model.apply(event);
      refresh();
      if (!data.nextPageToken) break;
      data = await api.get(`/v1/${name}/events`, {pageSize: PAGE, pageToken: data.nextPageToken})
        .catch((err) => err);
    }
    loaded = true;
    el.dataset.loaded = String(model.events.length);
    // A run still going continues on its stream, after the last event read.
    if (!model.terminal) {
      stream = new LiveStream(`/v1/${name}:streamEvents`, {
        after: model.last,
        onEvent: (_type, event) => { if (model.apply(event)) onLive(event); },
        onState: (s) => setPill(s),
      }).start();
    } else {
      setPill("ended");
    }
    if (wanted) focusEvent(wanted);
  }

  function onLive(event) {
    if (TERMINAL.has(event.type)) {
      api.get(`/v1/${name}`).then((r) => { run = r; paintRun(); }).catch(() => {});
    }
    refresh();
  }

  function refresh() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      paintRun();
      paintOutput();
      paintTools();
      paintApprovals();
      paintFilters();
      reindex();
      paint();
    });
  }

  function setPill(s) {
    const words = {connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
      ended: "Complete log", failed: "Disconnected"};
    ui.pill.textContent = words[s] || s;
    ui.pill.dataset.state = s;
  }

  async function cancel() {
    ui.cancel.disabled = true;
    ui.cancel.textContent = "Cancelling…";
    try {
      run = await api.post(`/v1/${name}:cancel`);
    } catch (err) {
      app.toast(err.message, "bad");
      ui.cancel.disabled = false;
      ui.cancel.textContent = "Cancel run";
    }
  }

  function exportJson() {
    download(`run-${runId}-events.json`, JSON.stringify({run, events: model.events}, null, 2));
  }

  // --- the run's summary -------------------------------------------------------------------

  function paintRun() {
    const state = model.terminal
      ? {"run.completed": "COMPLETED", "run.failed": "FAILED", "run.cancelled": "CANCELLED"}[model.terminal.type]
      : (model.startedAt && run.state === "QUEUED" ? "RUNNING" : run.state);
    clear(ui.badge, badge(state));
    if (ui.cancel) {
      ui.cancel.hidden = !isActive(state);
      if (!isActive(state)) ui.cancel.disabled = true;
    }
    const usage = model.terminal && run.usage ? run.usage : model.usage;
    const stat = (label, value, id) => [h("dt", label), h("dd", {dataset: {stat: id}}, value)];
    clear(ui.stats,
      h("div.stat", stat("Time to first token", ms(model.ttftMs), "ttft")),
      h("div.stat", stat("Duration", model.terminal ? ms(model.durationMs)
        : model.queuedAt ? `${ms(Date.now() - model.queuedAt)}…` : "—", "duration")),
      h("div.stat", stat("Tokens in", num(usage.inputTokens), "input")),
      h("div.stat", stat("Tokens out", num(usage.outputTokens), "output")),
      h("div.stat", stat("Reasoning", num(usage.reasoningTokens), "reasoning")),
      h("div.stat", stat("Attempts", String(Math.max(model.attempt, run.attempt || 0)), "attempts")),
      h("div.stat", stat("Events", num(model.events.length), "events")));
    const t = model.terminal;
    clear(ui.ending, t ? h(`div.ending-box.${kindOf(t.type).tone}`, {"data-testid": "ending"},
      h("strong", {"completed": "Completed", "failed": "Failed", "cancelled": "Cancelled"}[t.type.split(".")[1]]),
      t.type === "run.failed" ? h("span", h("code", t.reason), ` ${t.message || ""}`) : null,
      t.type === "run.cancelled" && t.reason ? h("span", ` ${t.reason}`) : null,
      h("span.muted.small", ` at ${clock(new Date(t.at).toISOString())}`)) : null);
  }

  function paintOutput() {
    const parts = [];
    for (const [attempt, part] of model.attempts) {
      if (!part.text && !part.reasoning && !part.dropReason) continue;
      parts.push(h(`div.attempt${part.dropReason ? ".dropped" : ""}`, {dataset: {attempt}},
        model.attempts.size > 1 ? h("div.attempt-label", `Attempt ${attempt}`,
          part.dropReason ? h("span.muted", ` — dropped after ${part.dropReason}, as the log says`) : null) : null,
        part.reasoning ? h("details.reasoning", h("summary", "Reasoning summary"),
          h("div.reasoning-text", part.reasoning)) : null,
        part.dropReason ? h("del.message-text", part.text) : h("div.message-text", part.text)));
    }
    clear(ui.output, parts.length ? parts : h("p.muted", model.terminal ? "No reply text." : "Waiting for output…"));
  }

  function paintTools() {
    const calls = [...model.tools.values()];
    clear(ui.tools, calls.length ? calls.map((c) => h(`details.tool-call.${c.result === null ? "running" : c.isError ? "bad" : "ok"}`,
      {open: calls.length <= 3, dataset: {tool: c.tool}},
      h("summary",
        h("span.tool-name", c.tool),
        h("span.badge." + (c.result === null ? "running" : c.isError ? "bad" : "ok"),
          c.result === null ? (c.elapsedMs ? `running ${ms(c.elapsedMs)}` : "running") : c.isError ? (c.errorCode || "error") : "ok"),
        h("span.muted.small", c.durationMs !== null ? ms(c.durationMs) : ""),
        model.attempts.size > 1 ? h("span.muted.small", `attempt ${c.attempt}`) : null,
        h("a.small", {href: `?event=${c.sequence}`, onclick: (e) => { e.preventDefault(); focusEvent(c.sequence); }}, `#${c.sequence}`)),
      h("div.kv", h("div.k", "Arguments"), h("pre.code", {"data-testid": "tool-args"}, pretty(c.argumentsJson))),
      c.result !== null ? h("div.kv", h("div.k", c.isError ? "Error" : "Result"),
        h("pre.code", {"data-testid": "tool-result"}, pretty(c.result)),
        c.truncated ? h("p.muted.small", "Cut at the gateway's size limit.") : null) : null))
      : h("p.muted", "No tool calls."));
  }

  // --- approvals: a card per call that waits for a person ------------------------------------

  function paintApprovals() {
    const pending = model.pendingApprovals;
    ui.approvals.hidden = pending.length === 0;
    clear(ui.approvals, pending.length ? h("div.card.approval-card",
      h("h2.card-title", pending.length === 1 ? "A tool call waits for approval"
        : `${pending.length} tool calls wait for approval`),
      pending.map((a) => approvalRow(a))) : null);
  }

  function approvalRow(a) {
    const message = h("input.deny-message", {type: "text", maxlength: "4096",
      placeholder: "Message to the model if denied (optional)", "aria-label": `Message if ${a.tool} is denied`});
    const may = app.can("member");
    return h("div.approval", {dataset: {call: a.callId}},
      h("div.approval-head",
        h("span.tool-name", a.tool),
        h("span.muted.small", {title: a.expireTime}, a.expireTime ? ` expires ${stamp(a.expireTime)}` : ""),
        h("a.small", {href: `?event=${a.sequence}`, onclick: (e) => { e.preventDefault(); focusEvent(a.sequence); }}, `#${a.sequence}`)),
      h("div.kv", h("div.k", "Arguments"), h("pre.code", pretty(a.argumentsJson))),
      may ? h("div.approval-actions", message,
        h("button.primary", {type: "button", "data-testid": "approve",
          onclick: (e) => decide(a, "APPROVE", "", e.currentTarget)}, "Approve"),
        h("button.danger-ghost", {type: "button", "data-testid": "deny",
          onclick: (e) => decide(a, "DENY", message.value, e.currentTarget)}, "Deny"))
        : h("p.muted.small", `Waiting for ${a.approverRoles.join(" or ") || "a member"} to decide.`));
  }

  async function decide(asked, decision, message, button) {
    const buttons = button.parentElement.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    try {
      // The request id makes a double click (or a retried request) one decision.
      await api.post(`/v1/${name}:submitToolApprovals`, {
        decisions: [{callId: asked.callId, decision, message}],
        requestId: uuid(),
      });
    } catch (err) {
      app.toast(err.message, "bad");
      for (const b of buttons) b.disabled = false;
    }
  }

  function paintFilters() {
    const types = [...model.types.entries()];
    clear(ui.filters, types.map(([type, count]) => h(`button.filter.${kindOf(type).category}`, {
      type: "button", "aria-pressed": String(!hidden.has(type)), dataset: {type},
      onclick: () => {
        if (hidden.has(type)) hidden.delete(type); else hidden.add(type);
        refresh();
      },
    }, type, h("span.count", num(count)))),
    hidden.size ? h("button.link", {type: "button", onclick: () => { hidden.clear(); refresh(); }}, "Show all") : null);
  }

  // --- the virtualized timeline --------------------------------------------------------------

  function reindex() {
    visible = [];
    const events = model.events;
    for (let i = 0; i < events.length; i += 1) if (!hidden.has(events[i].type)) visible.push(i);
    ui.spacer.style.height = `${visible.length * ROW}px`;
    ui.count.textContent = hidden.size ? `${num(visible.length)} of ${num(events.length)} events`
      : `${num(events.length)} events`;
  }

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; paint(); });
  }

  function paint() {
    if (!ui.viewport) return;
    const top = ui.viewport.scrollTop;
    const height = ui.viewport.clientHeight || 480;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(visible.length, Math.ceil((top + height) / ROW) + OVERSCAN);
    const t0 = model.queuedAt || (model.events[0] ? Date.parse(model.events[0].createTime) : 0);
    const rows = [];
    for (let v = first; v < last; v += 1) {
      const event = model.events[visible[v]];
      const sequence = Number(event.sequence);
      const kind = kindOf(event.type);
      const dropped = (model.attempts.get(event.attempt) || {}).dropReason && !kind.category.startsWith("lifecycle");
      const row = h(`div.row.${kind.category}${dropped ? ".dropped" : ""}${sequence === selected ? ".selected" : ""}`, {
        role: "option", "aria-selected": String(sequence === selected), dataset: {seq: sequence},
        onclick: () => select(sequence),
      },
      h("span.seq", String(sequence)),
      h("span.rel", `+${ms(Date.parse(event.createTime) - t0)}`),
      h("span.abs", {title: event.createTime}, clock(event.createTime)),
      h(`span.type.${kind.category}${kind.tone ? `.${kind.tone}` : ""}`, event.type),
      h("span.what", summary(event)));
      row.style.transform = `translateY(${v * ROW}px)`;
      rows.push(row);
    }
    ui.rows.replaceChildren(...rows);
  }

  function select(sequence) {
    selected = sequence;
    const event = model.events.find((e) => Number(e.sequence) === sequence);
    history.replaceState(null, "", `${location.pathname}?event=${sequence}`);
    paint();
    if (!event) return;
    const json = JSON.stringify(event, null, 2);
    const copy = h("button.ghost.small", {type: "button", "data-testid": "copy-event",
      onclick: () => copyText(json, copy)}, "Copy JSON");
    const link = h("button.ghost.small", {type: "button",
      onclick: () => copyText(location.href, link)}, "Copy link");
    clear(ui.detail,
      h("div.detail-head", h("strong", `#${sequence} ${event.type}`),
        h("span.muted.small", `attempt ${event.attempt} · ${event.createTime}`), copy, link),
      h("pre.code", {"data-testid": "event-json"}, JSON.stringify(payloadOf(event), null, 2)));
  }

  // ?event=N: scroll it into the middle of the list and highlight it.
  function focusEvent(sequence) {
    reindex();
    let index = model.events.findIndex((e) => Number(e.sequence) === sequence);
    if (index < 0) return;
    if (hidden.has(model.events[index].type)) {
      hidden.clear();
      reindex();
      paintFilters();
    }
    index = visible.indexOf(index);
    ui.viewport.scrollTop = Math.max(0, index * ROW - ui.viewport.clientHeight / 2 + ROW);
    select(sequence);
    ui.viewport.focus({preventScroll: true});
  }

  function keys(event) {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    event.preventDefault();
    const at = visible.findIndex((i) => Number(model.events[i].sequence) === selected);
    const next = Math.max(0, Math.min(visible.length - 1, at + (event.key === "ArrowDown" ? 1 : -1)));
    if (visible[next] === undefined) return;
    const sequence = Number(model.events[visible[next]].sequence);
    const top = next * ROW;
    if (top < ui.viewport.scrollTop) ui.viewport.scrollTop = top;
    else if (top + ROW > ui.viewport.scrollTop + ui.viewport.clientHeight) {
      ui.viewport.scrollTop = top + ROW - ui.viewport.clientHeight;
    }
    select(sequence);
  }

  init();
  return {
    el,
    destroy() {
      destroyed = true;
      if (stream) stream.stop();
    },
    get loaded() { return loaded; },
  };
}
