// The run event vocabulary as the dashboard renders it, and a run folded from its events.
//
// KINDS mirrors sdk/python/src/agentplatform/events.py (type → category) and adds how a
// timeline row summarises each payload. A type not listed here still renders: as its type
// and its payload's JSON (kindOf's fallback), so new events (tool approvals, say) show up
// before anyone teaches the dashboard about them — add an entry to render them better.

const COMMON = new Set(["name", "sequence", "type", "attempt", "createTime", "sessionSequence"]);

export const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);

const clip = (text, n = 140) => (text.length > n ? `${text.slice(0, n)}…` : text);
const quote = (text) => JSON.stringify(text || "");

export const KINDS = {
  "run.queued": {category: "lifecycle", summary: () => "Run stored, waiting for a worker"},
  "run.started": {category: "lifecycle", summary: (p) => `Started on ${p.model || "the model"}`},
  "run.attempt_started": {
    category: "lifecycle",
    summary: (p) => `Attempt ${p.attempt} began${p.reason ? ` after ${p.reason}` : ""}; earlier output dropped`,
  },
  "run.cancel_requested": {
    category: "lifecycle",
    summary: (p) => `Cancel asked${p.requestedBy ? ` by ${p.requestedBy}` : ""}${p.reason ? `: ${p.reason}` : ""}`,
  },
  "model.retry": {
    category: "lifecycle",
    summary: (p) => `Model call retried (${p.retry})${p.statusCode ? ` after HTTP ${p.statusCode}` : ""} in ${Number(p.delayMs || 0)} ms${p.message ? `: ${p.message}` : ""}`,
  },
  "transcript.compacted": {
    category: "lifecycle",
    summary: (p) => `Transcript fitted: ${p.omittedMessages || 0} oldest messages left out, ${p.keptMessages || 0} kept (~${Number(p.estimatedTokens || 0)} of ${Number(p.contextWindow || 0)} tokens)`,
  },
  "reasoning.summary.delta": {category: "reasoning", summary: (p) => quote(p.text)},
  "reasoning.state": {
    category: "reasoning",
    summary: (p) => `Signed reasoning kept for the model (${(p.blocks || []).length} blocks)`,
  },
  "output_text.delta": {category: "text", summary: (p) => quote(p.text)},
  "tool_call.started": {
    category: "tool",
    summary: (p) => `${p.tool}(${clip(p.argumentsJson || "", 100)})`,
  },
  "tool_call.progress": {
    category: "tool",
    summary: (p) => `${p.callId} still running after ${Number(p.elapsedMs || 0)} ms`,
  },
  "tool_call.completed": {
    category: "tool",
    summary: (p) => `${p.isError ? `failed${p.errorCode ? ` (${p.errorCode})` : ""}` : "returned"} in ${Number(p.durationMs || 0)} ms: ${clip(p.result || "", 100)}`,
  },
  // The approval card itself (approve / deny) belongs next to the tool calls in
  // pages/run.js; these lines make the events readable in the timeline meanwhile.
  "tool_call.approval_requested": {
    category: "tool", tone: "warn",
    summary: (p) => `${p.tool}(${clip(p.argumentsJson || "", 80)}) waits for approval by ${(p.approverRoles || []).join(" or ") || "a person"}`,
  },
  "tool_call.approved": {category: "tool", summary: (p) => `${p.callId} approved${p.decidedBy ? ` by ${p.decidedBy}` : ""}`},
  "tool_call.denied": {
    category: "tool",
    summary: (p) => `${p.callId} denied${p.decidedBy ? ` by ${p.decidedBy}` : ""}${p.reason ? ` (${p.reason})` : ""}${p.message ? `: ${p.message}` : ""}`,
  },
  usage: {
    category: "usage",
    summary: (p) => `${Number(p.inputTokens || 0)} in · ${Number(p.outputTokens || 0)} out${Number(p.reasoningTokens) ? ` · ${Number(p.reasoningTokens)} reasoning` : ""}`,
  },
  "run.completed": {category: "terminal", tone: "ok", summary: () => "Completed; the reply is in the transcript"},
  "run.failed": {category: "terminal", tone: "bad", summary: (p) => `${p.reason}: ${p.message || ""}`},
  "run.cancelled": {category: "terminal", tone: "muted", summary: (p) => `Cancelled${p.reason ? `: ${p.reason}` : ""}`},
};

export function kindOf(type) {
  return KINDS[type] || {category: "other", summary: (p) => clip(JSON.stringify(p), 160)};
}

export function payloadOf(event) {
  for (const key of Object.keys(event)) {
    if (!COMMON.has(key)) return event[key] || {};
  }
  return {};
}

export function summary(event) {
  try {
    return kindOf(event.type).summary(payloadOf(event));
  } catch {
    return JSON.stringify(payloadOf(event));
  }
}

export function runOfEvent(event) {
  return event.name.split("/events/")[0];
}

// One run as its events tell it: text per attempt, tool calls, usage, the end.
export class RunModel {
  constructor(name) {
    this.name = name;
    this.events = [];
    this.last = 0;
    this.attempt = 1;
    this.attempts = new Map();  // attempt → {text, reasoning, dropReason}
    this.tools = new Map();  // call id + attempt → call
    this.usage = {inputTokens: 0, outputTokens: 0, reasoningTokens: 0};
    this.terminal = null;
    this.queuedAt = null;
    this.startedAt = null;
    this.firstTokenAt = null;
    this.model = "";
    this.types = new Map();  // type → count
    this.approvals = new Map();  // call id → the approval request and, once made, its decision
  }

  // The approval requests no decision has answered yet, in the order they were asked.
  get pendingApprovals() {
    return [...this.approvals.values()].filter((a) => a.decision === null);
  }

  // Fold one event in; false when it is one already seen.
  apply(event) {
    const sequence = Number(event.sequence);
    if (sequence <= this.last) return false;
    this.last = sequence;
    this.events.push(event);
    this.types.set(event.type, (this.types.get(event.type) || 0) + 1);
    const p = payloadOf(event);
    const attempt = event.attempt || this.attempt;
    const time = Date.parse(event.createTime);
    const part = this.part(attempt);
    switch (event.type) {
      case "run.queued":
        this.queuedAt = time;
        break;
      case "run.started":
        this.startedAt = this.startedAt || time;
        this.model = p.model || "";
        break;
      case "run.attempt_started":
        for (const [n, earlier] of this.attempts) {
          if (n < p.attempt) earlier.dropReason = earlier.dropReason || p.reason || "a new attempt";
        }
        this.attempt = Math.max(this.attempt, p.attempt);
        this.part(p.attempt);
        break;
      case "output_text.delta":
        part.text += p.text || "";
        if (this.firstTokenAt === null) this.firstTokenAt = time;
        break;
      case "reasoning.summary.delta":
        part.reasoning += p.text || "";
        if (this.firstTokenAt === null) this.firstTokenAt = time;
        break;
      case "tool_call.started":
        this.tools.set(`${attempt}/${p.callId}`, {
          callId: p.callId, tool: p.tool, argumentsJson: p.argumentsJson || "{}", attempt,
          startedAt: time, sequence, result: null, isError: false, durationMs: null,
          errorCode: "", elapsedMs: 0,
        });
        break;
      case "tool_call.progress": {
        const call = this.tools.get(`${attempt}/${p.callId}`);
        if (call) call.elapsedMs = Number(p.elapsedMs || 0);
        break;
      }
      case "tool_call.completed": {
        const call = this.tools.get(`${attempt}/${p.callId}`);
        if (call) {
          Object.assign(call, {
            result: p.result || "", isError: !!p.isError, durationMs: Number(p.durationMs || 0),
            errorCode: p.errorCode || "", truncated: !!p.truncated,
          });
        }
        break;
      }
      case "tool_call.approval_requested":
        this.approvals.set(p.callId, {
          callId: p.callId, tool: p.tool, argumentsJson: p.argumentsJson || "{}",
          approverRoles: p.approverRoles || [], expireTime: p.expireTime || "", sequence,
          decision: null,
        });
        break;
      case "tool_call.approved":
      case "tool_call.denied": {
        const asked = this.approvals.get(p.callId);
        if (asked) {
          asked.decision = {approved: event.type === "tool_call.approved", by: p.decidedBy || "",
            reason: p.reason || "", message: p.message || ""};
        }
        break;
      }
      case "run.cancelled":
        // A run cancelled while it waited answers its pending calls with the cancel itself.
        for (const asked of this.approvals.values()) {
          if (asked.decision === null) asked.decision = {approved: false, by: "", reason: "CANCELLED", message: ""};
        }
        this.terminal = {type: event.type, at: time, ...p};
        break;
      case "usage":
        this.usage.inputTokens += Number(p.inputTokens || 0);
        this.usage.outputTokens += Number(p.outputTokens || 0);
        this.usage.reasoningTokens += Number(p.reasoningTokens || 0);
        break;
      default:
        if (TERMINAL.has(event.type)) this.terminal = {type: event.type, at: time, ...p};
    }
    return true;
  }

  part(attempt) {
    if (!this.attempts.has(attempt)) {
      this.attempts.set(attempt, {text: "", reasoning: "", dropReason: ""});
    }
    return this.attempts.get(attempt);
  }

  get text() {
    return this.part(this.attempt).text;
  }

  get ttftMs() {
    return this.firstTokenAt !== null && this.startedAt !== null ? this.firstTokenAt - this.startedAt : null;
  }

  get durationMs() {
    const end = this.terminal ? this.terminal.at : null;
    return end !== null && this.queuedAt !== null ? end - this.queuedAt : null;
  }
}
