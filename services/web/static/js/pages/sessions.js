// Sessions: the workspace's conversations, newest first, with how their latest run went.

import * as api from "../api.js";
import {ago, badge, clear, h, idOf, num} from "../dom.js";

const PAGE_SIZE = 20;
const STATES = ["", "RUNNING", "QUEUED", "COMPLETED", "FAILED", "CANCELLED", "NONE"];

// What the search box and the status menu ask for, as an AIP-160 filter.
export function filterOf(text, state) {
  const terms = [];
  const typed = text.trim();
  if (typed) {
    // An expression (title:"x", metadata.team="ml") goes as it is; words search title+metadata.
    terms.push(/^(title|metadata\.[\w.-]+|latest_run_state)\s*[:=]/.test(typed)
      ? typed : JSON.stringify(typed));
  }
  if (state) terms.push(`latest_run_state=${state}`);
  return terms.join(" AND ");
}

export function render(app, _params, query) {
  const search = h("input.search", {
    type: "search", placeholder: "Search titles and metadata…", "aria-label": "Filter sessions",
    value: query.get("q") || "",
  });
  const state = h("select", {"aria-label": "Latest run status"},
    STATES.map((s) => h("option", {value: s, selected: s === (query.get("state") || "")},
      s ? (s === "NONE" ? "No runs" : s[0] + s.slice(1).toLowerCase()) : "Any status")));
  const body = h("tbody");
  const status = h("p.muted.table-status");
  const prev = h("button.ghost", {type: "button", disabled: true}, "← Newer");
  const next = h("button.ghost", {type: "button", disabled: true}, "Older →");
  const tokens = [""];
  let page = 0;
  let generation = 0;

  async function load() {
    const mine = ++generation;
    usage = null;
    status.textContent = "Loading…";
    const params = new URLSearchParams();
    if (search.value.trim()) params.set("q", search.value.trim());
    if (state.value) params.set("state", state.value);
    history.replaceState(null, "", `/sessions${params.toString() ? `?${params}` : ""}`);
    let data;
    try {
      data = await api.get("/v1/sessions", {
        pageSize: PAGE_SIZE, pageToken: tokens[page], filter: filterOf(search.value, state.value),
      });
    } catch (err) {
      if (mine !== generation) return;
      clear(body);
      status.textContent = err.message;
      status.classList.add("error");
      return;
    }
    if (mine !== generation) return;
    status.classList.remove("error");
    tokens[page + 1] = data.nextPageToken || "";
    prev.disabled = page === 0;
    next.disabled = !data.nextPageToken;
    const sessions = data.sessions || [];
    clear(body, sessions.map(row));
    status.textContent = sessions.length ? ""
      : (search.value || state.value ? "No session matches." : "No sessions yet.");
  }

  function row(s) {
    const id = idOf(s.name);
    const tokensCell = h("td.num", {dataset: {col: "tokens"}}, "…");
    tokensOf(s.name).then((total) => { tokensCell.textContent = total === null ? "—" : num(total); });
    const meta = Object.entries(s.metadata || {});
    return h("tr.link-row", {dataset: {session: id}},
      h("td",
        h("a.row-title", {href: `/sessions/${id}`}, s.title || "Untitled session"),
        meta.length ? h("div.chips", meta.slice(0, 4).map(([k, v]) => h("span.chip", `${k}=${v}`))) : null),
      h("td", badge(s.latestRunState)),
      h("td", h("time", {datetime: s.updateTime, title: s.updateTime}, ago(s.updateTime))),
      h("td.num", {dataset: {col: "runs"}}, num(s.runCount)),
      tokensCell);
  }

  // Tokens per session from the usage rollups (QueryUsage grouped by session), read once
  // per page load; a session missing from them has used none.
  let usage = null;
  function tokensOf(session) {
    usage = usage || api.listAll("/v1/usage:query", "groups", {groupBy: "SESSION", pageSize: 1000})
      .then((groups) => new Map(groups.map((g) => [g.session,
        Number((g.usage || {}).inputTokens || 0) + Number((g.usage || {}).outputTokens || 0)])))
      .catch(() => null);
    return usage.then((bySession) => (bySession ? bySession.get(session) || 0 : null));
  }

  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { page = 0; tokens.length = 1; load(); }, 250);
  });
  state.addEventListener("change", () => { page = 0; tokens.length = 1; load(); });
  prev.addEventListener("click", () => { page -= 1; load(); });
  next.addEventListener("click", () => { page += 1; load(); });

  const create = app.can("member")
    ? h("button.primary", {type: "button", onclick: () => openCreate(app)}, "New session")
    : null;
  const el = h("section.page",
    h("div.page-head", h("div", h("h1", "Sessions"),
      h("p.muted", "Every conversation of this workspace, newest first.")), create),
    h("div.toolbar", search, state),
    h("div.card.table-card",
      h("table.table.sessions-table",
        h("thead", h("tr", h("th", "Title"), h("th", "Latest run"), h("th", "Last activity"),
          h("th.num", "Runs"), h("th.num", "Tokens"))),
        body),
      status,
      h("div.pager", prev, next)));
  load();
  return {el, destroy: () => { generation += 1; }};
}

function openCreate(app) {
  const title = h("input", {name: "title", required: true, maxlength: 200, placeholder: "Support triage"});
  const instructions = h("textarea", {name: "instructions", rows: 3, placeholder: "Optional: added to every run's system prompt"});
  const metadata = h("input", {name: "metadata", placeholder: "team=support, env=prod"});
  const error = h("p.form-error", {role: "alert"});
  const dialog = h("dialog.dialog", {"aria-label": "New session"},
    h("form", {method: "dialog", onsubmit: async (event) => {
      event.preventDefault();
      const labels = {};
      for (const pair of metadata.value.split(",").map((p) => p.trim()).filter(Boolean)) {
        const [key, ...rest] = pair.split("=");
        labels[key.trim()] = rest.join("=").trim();
      }
      try {
        const made = await api.post("/v1/sessions", {
          title: title.value.trim(), instructions: instructions.value, metadata: labels,
        });
        dialog.close();
        dialog.remove();
        app.navigate(`/sessions/${idOf(made.name)}`);
      } catch (err) {
        error.textContent = err.message;
      }
    }},
    h("h2", "New session"),
    h("label", "Title", title),
    h("label", "Instructions", instructions),
    h("label", "Metadata", metadata),
    error,
    h("div.dialog-actions",
      h("button.ghost", {type: "button", onclick: () => { dialog.close(); dialog.remove(); }}, "Cancel"),
      h("button.primary", {type: "submit"}, "Create session"))));
  document.body.append(dialog);
  dialog.showModal();
  title.focus();
}
