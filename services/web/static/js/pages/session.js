// A session: its transcript, its runs, a composer, and the session's live event stream, so
// a run started anywhere (the CLI, the API, another tab) appears and streams here.

import * as api from "../api.js";
import {ago, badge, clear, h, idOf, isActive, ms, notFound, num, uuid} from "../dom.js";
import {payloadOf, RunModel, runOfEvent, TERMINAL} from "../events.js";
import {LiveStream} from "../live.js";
import {bars} from "../plot.js";

export function render(app, [sessionId]) {
  const name = `sessions/${sessionId}`;
  const el = h("section.page.session-page", h("p.muted", "Loading…"));
  const state = {
    session: null,
    messages: new Map(),  // message name → node
    runs: new Map(),  // run name → Run resource
    models: new Map(),  // run name → RunModel from the stream
    bubbles: new Map(),  // run name → Bubble while its reply streams
    stream: null,
    destroyed: false,
  };
  let updateComposer = () => {};
  const transcript = h("ol.transcript", {"aria-label": "Transcript", "data-testid": "transcript"});
  const streaming = h("div.streaming");
  const runList = h("ol.run-list", {"data-testid": "runs"});
  const plots = h("div.plots");
  const livePill = h("span.live-pill", {role: "status", "data-testid": "live-state"}, "Connecting…");
  const composer = app.can("member") ? makeComposer() : h("p.readonly-note", {"data-testid": "read-only"},
    "You have the viewer role: you can follow this session but not send messages.");

  function setLive(s) {
    const words = {connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
      ended: "Ended", failed: "Disconnected"};
    livePill.textContent = words[s] || s;
    livePill.dataset.state = s;
  }

  async function init() {
    let session;
    try {
      session = await api.get(`/v1/${name}`);
    } catch (err) {
      if (state.destroyed) return;
      clear(el, err.status === "NOT_FOUND" || err.status === "INVALID_ARGUMENT"
        ? notFound("This session does not exist, or it is not in this workspace.")
        : h("p.error", err.message));
      return;
    }
    state.session = session;
    const meta = Object.entries(session.metadata || {});
    clear(el,
      h("nav.crumbs", {"aria-label": "Breadcrumb"}, h("a", {href: "/sessions"}, "Sessions"), h("span", "/"),
        h("span", session.title || "Untitled session")),
      h("div.page-head",
        h("div", h("h1", session.title || "Untitled session"),
          h("p.muted", `Model ${session.model || "—"} · created ${ago(session.createTime)}`),
          meta.length ? h("div.chips", meta.map(([k, v]) => h("span.chip", `${k}=${v}`))) : null),
        livePill),
      h("div.session-grid",
        h("div.conversation.card", transcript, streaming, composer),
        h("aside.session-side",
          h("div.card", h("h2.card-title", "Runs"), runList),
          plots)));
    await Promise.all([loadMessages(), loadRuns()]);
    if (state.destroyed) return;
    // The stream continues after the session's cursor; a run already going has its earlier
    // events in its own log (what both deliver is applied once: RunModel drops repeats).
    if (session.activeRun) {
      const earlier = await api.listAll(`/v1/${session.activeRun}/events`, "events", {pageSize: 5000});
      for (const event of earlier) await onEvent(event);
    }
    state.stream = new LiveStream(`/v1/${name}:streamEvents`, {
      after: Number(session.lastEventSequence || 0),
      onEvent: (_type, event) => onEvent(event),
      onState: setLive,
    }).start();
  }

  async function loadMessages() {
    const messages = await api.listAll(`/v1/${name}/messages`, "messages", {pageSize: 1000});
    if (state.destroyed) return;
    for (const m of messages) {
      if (state.messages.has(m.name)) continue;
      if (m.role === "ASSISTANT" && state.bubbles.has(m.run)) {
        state.bubbles.get(m.run).el.remove();
        state.bubbles.delete(m.run);
      }
      const node = messageNode(m);
      state.messages.set(m.name, node);
      transcript.append(node);
    }
    if (!messages.length && !transcript.querySelector(".empty")) {
      transcript.append(h("li.empty.muted", "No messages yet. Say something below."));
    } else if (messages.length) {
      transcript.querySelector(".empty")?.remove();
    }
    stickToBottom();
  }

  async function loadRuns() {
    const data = await api.get(`/v1/${name}/runs`, {pageSize: 100});
    for (const r of data.runs || []) state.runs.set(r.name, r);
    renderRuns();
  }

  function messageNode(m) {
    const user = m.role === "USER";
    return h(`li.message.${user ? "user" : "assistant"}`, {dataset: {message: idOf(m.name)}},
      h("div.message-head",
        h("span.author", user ? m.authorDisplayName || "User"
          : (!m.authorDisplayName || m.authorDisplayName === "assistant" ? "Assistant" : m.authorDisplayName)),
        h("time.muted", {datetime: m.createTime, title: m.createTime}, ago(m.createTime)),
        m.run ? h("a.muted.small", {href: `/${m.run}`}, "run ›") : null),
      h("div.message-text", m.text));
  }

  function renderRuns() {
    const runs = [...state.runs.values()].sort((a, b) => (a.createTime < b.createTime ? 1 : -1));
    clear(runList, runs.length ? runs.map((r) => {
      const model = state.models.get(r.name);
      const runState = model && model.terminal ? terminalState(model.terminal.type) : r.state;
      const usage = r.usage || {};
      const tokens = Number(usage.inputTokens || 0) + Number(usage.outputTokens || 0);
      return h("li.run-item", {dataset: {run: idOf(r.name)}},
        h("a", {href: `/${r.name}`},
          h("div.run-line", badge(runState), h("span.muted.small", ago(r.createTime))),
          h("div.run-line.small.muted",
            h("span", `${num(tokens)} tokens`),
            h("span", ms(durationOf(r))))));
    }) : h("li.muted.small", "No runs yet."));
    const ordered = runs.slice().reverse().slice(-40);
    clear(plots, ordered.length > 1 ? [
      bars("Tokens per run", ordered.map((r, i) => ({
        label: `#${i + 1}`,
        value: Number((r.usage || {}).inputTokens || 0) + Number((r.usage || {}).outputTokens || 0),
      })), {format: num}),
      bars("Duration per run", ordered.map((r, i) => ({
        label: `#${i + 1}`, value: durationOf(r) || 0,
        tone: r.state === "FAILED" ? "bad" : "",
      })), {format: (v) => ms(v)}),
    ] : null);
  }

  async function onEvent(event) {
    const run = runOfEvent(event);
    let model = state.models.get(run);
    if (!model) {
      model = new RunModel(run);
      state.models.set(run, model);
    }
    if (!model.apply(event)) return;
    if (!state.runs.has(run) || event.type === "run.started") {
      api.get(`/v1/${run}`).then((r) => { state.runs.set(r.name, r); renderRuns(); }).catch(() => {});
    }
    if (event.type === "run.queued") loadMessages().catch(() => {});
    if (TERMINAL.has(event.type)) {
      const r = await api.get(`/v1/${run}`).catch(() => null);
      if (r) state.runs.set(r.name, r);
      renderRuns();
      await loadMessages().catch(() => {});
      const bubble = state.bubbles.get(run);
      if (bubble) {
        if (event.type === "run.completed") {
          bubble.el.remove();
        } else {
          bubble.finish(model);
        }
        state.bubbles.delete(run);
      }
      updateComposer();
      return;
    }
    if (!hasReply(run)) {
      let bubble = state.bubbles.get(run);
      if (!bubble) {
        bubble = new Bubble(run);
        state.bubbles.set(run, bubble);
        streaming.append(bubble.el);
      }
      bubble.update(model, event);
      stickToBottom();
    }
    updateComposer();
  }

  function hasReply(run) {
    for (const node of state.messages.values()) {
      if (node.classList.contains("assistant") && node.querySelector(`a[href="/${run}"]`)) return true;
    }
    return false;
  }

  function activeRun() {
    for (const r of state.runs.values()) {
      const model = state.models.get(r.name);
      if (isActive(r.state) && !(model && model.terminal)) return r;
    }
    return null;
  }

  function stickToBottom() {
    const box = transcript.parentElement;
    if (box && box.scrollHeight - box.scrollTop - box.clientHeight < 160) box.scrollTop = box.scrollHeight;
  }

  // --- composer ------------------------------------------------------------------------

  function makeComposer() {
    const input = h("textarea.composer-input", {
      rows: 2, placeholder: "Message the agent…  (Enter sends, Shift+Enter for a new line)",
      "aria-label": "Message", "data-testid": "composer-input",
    });
    const error = h("p.form-error", {role: "alert"});
    const send = h("button.primary", {type: "submit", "data-testid": "send"}, "Send");
    const queue = h("button.ghost", {type: "button", "data-testid": "enqueue",
      onclick: () => submit("ENQUEUE")}, "Queue after it");
    const interrupt = h("button.danger-ghost", {type: "button", "data-testid": "interrupt",
      onclick: () => submit("INTERRUPT")}, "Interrupt and send");
    const activeNote = h("div.active-note", {"data-testid": "active-run"});
    const choices = h("div.composer-choices", queue, interrupt);

    async function submit(policy) {
      const text = input.value.trim();
      if (!text) return;
      error.textContent = "";
      send.disabled = true;
      try {
        const run = await api.post(`/v1/${name}/runs`, {
          inputText: text, requestId: uuid(), concurrencyPolicy: policy,
        });
        input.value = "";
        state.runs.set(run.name, run);
        renderRuns();
        if (!state.bubbles.has(run.name)) {
          const bubble = new Bubble(run.name);
          state.bubbles.set(run.name, bubble);
          streaming.append(bubble.el);
        }
        await loadMessages();
      } catch (err) {
        error.textContent = err.reason === "RUN_ALREADY_ACTIVE"
          ? "Another run is active: queue this message after it, or interrupt it."
          : err.message;
        if (err.reason === "RUN_ALREADY_ACTIVE") await loadRuns();
      } finally {
        send.disabled = false;
        updateComposer();
      }
    }

    updateComposer = () => {
      const active = activeRun();
      choices.hidden = !active;
      send.hidden = !!active;
      clear(activeNote, active ? [
        badge(state.models.get(active.name)?.startedAt ? "RUNNING" : active.state),
        h("span", " A run is active. "),
        h("a", {href: `/${active.name}`}, "Inspect"),
        h("button.link", {type: "button", "data-testid": "cancel-active", onclick: async () => {
          await api.post(`/v1/${active.name}:cancel`).catch((err) => app.toast(err.message, "bad"));
        }}, "Cancel it"),
      ] : null);
    };

    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit(activeRun() ? "ENQUEUE" : "REJECT");
      }
    });
    setTimeout(updateComposer, 0);
    return h("form.composer", {onsubmit: (event) => { event.preventDefault(); submit("REJECT"); }},
      activeNote, input, error, h("div.composer-actions", choices, send));
  }

  init();
  return {
    el,
    destroy() {
      state.destroyed = true;
      if (state.stream) state.stream.stop();
    },
  };
}

function terminalState(type) {
  return {"run.completed": "COMPLETED", "run.failed": "FAILED", "run.cancelled": "CANCELLED"}[type];
}

function durationOf(run) {
  if (!run.endTime) return null;
  return Date.parse(run.endTime) - Date.parse(run.createTime);
}

// The reply of a run still streaming: text appended as it comes (no re-render, so no jump),
// earlier attempts struck out, reasoning folded away, tool calls as they happen.
export class Bubble {
  constructor(run) {
    this.run = run;
    this.parts = new Map();
    this.tools = new Map();
    this.toolBox = h("div.tool-chips");
    this.body = h("div.bubble-body");
    this.status = h("span.muted.small.bubble-status", "Waiting for a worker…");
    this.el = h("li.message.assistant.streaming-reply", {dataset: {run: idOf(run)}, "aria-live": "off"},
      h("div.message-head", h("span.author", "Assistant"), this.status,
        h("a.muted.small", {href: `/${run}`}, "run ›")),
      this.toolBox, this.body);
  }

  part(attempt, dropped) {
    let part = this.parts.get(attempt);
    if (!part) {
      const text = h("div.message-text.stream-text", {"data-testid": "stream-text"});
      const reasoning = h("div.reasoning-text");
      const details = h("details.reasoning", {hidden: true}, h("summary", "Reasoning"), reasoning);
      part = {text, reasoning, details, wrap: h("div.attempt", {dataset: {attempt}}, details, text)};
      this.parts.set(attempt, part);
      this.body.append(part.wrap);
    }
    if (dropped && !part.wrap.classList.contains("dropped")) {
      part.wrap.classList.add("dropped");
      part.wrap.prepend(h("div.dropped-note", `Attempt ${attempt} — dropped (${dropped})`));
    }
    return part;
  }

  update(model, event) {
    const attempt = event.attempt || model.attempt;
    const part = this.part(attempt);
    const p = payloadOf(event);
    switch (event.type) {
      case "run.started":
        this.status.textContent = "Thinking…";
        break;
      case "run.attempt_started":
        for (const [n, info] of model.attempts) if (info.dropReason) this.part(n, info.dropReason);
        this.status.textContent = `Attempt ${model.attempt}…`;
        break;
      case "output_text.delta":
        part.text.append(p.text || "");
        this.status.textContent = "Writing…";
        break;
      case "reasoning.summary.delta":
        part.details.hidden = false;
        part.reasoning.append(p.text || "");
        break;
      case "tool_call.started":
      case "tool_call.completed": {
        const key = `${attempt}/${p.callId}`;
        const call = model.tools.get(key);
        if (!call) break;
        let chip = this.tools.get(key);
        if (!chip) {
          chip = h("span.tool-chip");
          this.tools.set(key, chip);
          this.toolBox.append(chip);
        }
        chip.className = `tool-chip ${call.result === null ? "running" : call.isError ? "bad" : "ok"}`;
        chip.textContent = call.result === null ? `⚙ ${call.tool}…` : `⚙ ${call.tool} · ${ms(call.durationMs)}`;
        this.status.textContent = call.result === null ? `Calling ${call.tool}…` : "Thinking…";
        break;
      }
      default:
        break;
    }
  }

  finish(model) {
    const t = model.terminal || {};
    this.status.textContent = "";
    this.el.classList.add("ended");
    this.el.append(h(`div.terminal-note.${t.type === "run.failed" ? "bad" : "muted"}`,
      t.type === "run.failed" ? `Failed: ${t.reason} — ${t.message || ""}` : "Cancelled"));
  }
}
