// A resumable server-sent-events stream, read with fetch rather than EventSource.
//
// It speaks the same protocol as EventSource — `id:` is the event's sequence, the edge's
// `retry:` hint paces reconnects, and every reconnect sends `Last-Event-ID` so the edge
// resumes exactly after the last event delivered — but it also:
//   * hands over events of every type, known or not (EventSource delivers a named event
//     only to a listener registered for that name, and new event types will come);
//   * never delivers a sequence twice (anything at or below the cursor is dropped);
//   * says which state it is in (live, reconnecting…, ended, failed), for the page to show;
//   * notices a connection that went silent (laptop sleep, a dead proxy) by the edge's
//     keep-alives going missing, and reconnects at once when the browser comes back online.

const FATAL = new Set(["NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_ARGUMENT"]);

export class LiveStream {
  constructor(url, {after = 0, onEvent, onState = () => {}, silenceMs = 40000}) {
    this.url = url;
    this.cursor = after;
    this.onEvent = onEvent;
    this.onState = onState;
    this.silenceMs = silenceMs;
    this.retryMs = 1000;
    this.state = "idle";
    this.failures = 0;
    this.stopped = false;
    this.controller = null;
    this.wake = null;
    this.online = () => this.nudge();
    window.addEventListener("online", this.online);
    document.addEventListener("visibilitychange", this.online);
  }

  start() {
    this.loop();
    return this;
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.online);
    document.removeEventListener("visibilitychange", this.online);
    if (this.controller) this.controller.abort();
    if (this.wake) this.wake();
  }

  // Reconnect now instead of after the back-off (the browser is back online or visible).
  nudge() {
    if (this.state === "reconnecting" && this.wake && document.visibilityState !== "hidden") {
      this.wake();
    }
  }

  setState(state, detail) {
    if (this.state === state && !detail) return;
    this.state = state;
    this.onState(state, detail);
  }

  async loop() {
    while (!this.stopped) {
      this.setState(this.failures ? "reconnecting" : "connecting");
      const outcome = await this.connect().catch((err) => ({kind: "retry", err}));
      if (this.stopped) return;
      if (outcome.kind === "ended") return this.setState("ended");
      if (outcome.kind === "failed") return this.setState("failed", outcome.error);
      this.failures += 1;
      this.setState("reconnecting");
      const delay = Math.min(this.retryMs * Math.min(this.failures, 5), 10000);
      await new Promise((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, delay);
      });
      this.wake = null;
    }
  }

  async connect() {
    this.controller = new AbortController();
    const headers = {accept: "text/event-stream"};
    if (this.cursor > 0) headers["last-event-id"] = String(this.cursor);
    const response = await fetch(this.url, {
      headers, credentials: "same-origin", cache: "no-store", signal: this.controller.signal,
    });
    if (response.status === 204) return {kind: "ended"};  // nothing after the cursor, ever
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const error = body.error || {status: "UNKNOWN", message: `HTTP ${response.status}`};
      return FATAL.has(error.status) ? {kind: "failed", error} : {kind: "retry"};
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let silence = null;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => this.controller.abort(), this.silenceMs);
    };
    watch();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return {kind: "retry"};  // the edge went away mid-stream: resume
        watch();
        buffer += decoder.decode(value, {stream: true});
        let end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          const result = this.dispatch(block);
          if (result) return result;
        }
      }
    } finally {
      clearTimeout(silence);
      this.controller.abort();
    }
  }

  dispatch(block) {
    const fields = {data: []};
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue;  // a keep-alive comment
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (name === "data") fields.data.push(value);
      else fields[name] = value;
    }
    if (fields.retry && /^\d+$/.test(fields.retry)) this.retryMs = Math.max(200, Number(fields.retry));
    if (!fields.data.length) {
      if (this.state !== "live") {
        this.failures = 0;
        this.setState("live");
      }
      return null;
    }
    const data = JSON.parse(fields.data.join("\n"));
    if (fields.event === "error" && !fields.id) {
      const error = data.error || {};
      return FATAL.has(error.status) ? {kind: "failed", error} : {kind: "retry"};
    }
    this.failures = 0;
    this.setState("live");
    const position = Number(fields.id);
    if (!(position > this.cursor)) return null;  // seen already: never render twice
    this.cursor = position;
    this.onEvent(fields.event || "message", data, position);
    return null;
  }
}
