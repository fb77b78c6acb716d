// The workspace's administration, each page offered to the roles that may use it (main.js)
// and refused by the edge to anyone else: members, the tool registry, secrets (names and
// versions, never values), API keys (shown once), the vault's master key.

import * as api from "../api.js";
import {ago, clear, copyText, h, idOf, num, stamp} from "../dom.js";

const ROLES = ["viewer", "member", "admin", "owner"];

function page(title, lead, ...children) {
  return h("section.page.admin-page", h("div.page-head", h("div", h("h1", title), h("p.muted", lead))), ...children);
}

function table(headers, rows, empty, testid) {
  return h("div.card.table-card",
    h("table.table", {"data-testid": testid},
      h("thead", h("tr", headers.map((x) => h(x.startsWith("#") ? "th.num" : "th", x.replace(/^#/, ""))))),
      h("tbody", rows.length ? rows : h("tr", h("td.muted", {colspan: headers.length}, empty)))));
}

// Load, render, and re-render after a change; errors show in place.
function loader(el, load) {
  const box = h("div", h("p.muted", "Loading…"));
  el.append(box);
  const reload = async () => {
    try {
      clear(box, await load(reload));
    } catch (err) {
      clear(box, h("p.error", err.message));
    }
  };
  reload();
  return reload;
}

async function act(app, work, done) {
  try {
    await work();
    if (done) await done();
  } catch (err) {
    app.toast(err.message, "bad");
  }
}

// --- members ----------------------------------------------------------------------------

export function members(app) {
  const el = page("Members", "Who belongs to this workspace, and with which role.");
  loader(el, async (reload) => {
    const list = await api.listAll("/v1/members", "members", {pageSize: 1000});
    const admin = app.can("admin");
    const rows = list.map((m) => h("tr", {dataset: {member: idOf(m.name)}},
      h("td", h("strong", m.displayName), m.user === `users/${app.me.name.split("/")[1]}` ? h("span.chip", "you") : null),
      h("td", admin && m.role !== "owner"
        ? h("select", {"aria-label": `Role of ${m.displayName}`, onchange: (e) => act(app,
          () => api.patch(`/v1/${m.name}?updateMask=role`, {role: e.target.value}), reload)},
        ROLES.filter((r) => r !== "owner" || app.can("owner")).map((r) => h("option", {value: r, selected: r === m.role}, r)))
        : h("span.role", {dataset: {role: m.role}}, m.role)),
      h("td", ago(m.createTime)),
      h("td.actions", admin && m.role !== "owner" ? h("button.danger-ghost.small", {type: "button",
        onclick: () => confirm(`Remove ${m.displayName} from the workspace?`) && act(app, () => api.del(`/v1/${m.name}`), reload)},
      "Remove") : null)));
    const add = admin ? addMember(app, reload) : null;
    return [table(["Name", "Role", "Joined", ""], rows, "No members.", "members"), add];
  });
  return {el};
}

function addMember(app, reload) {
  const name = h("input", {placeholder: "Display name", required: true, "aria-label": "Display name"});
  const role = h("select", {"aria-label": "Role"}, ROLES.slice(0, 3).map((r) => h("option", {value: r, selected: r === "member"}, r)));
  return h("form.inline-form.card", {onsubmit: (e) => {
    e.preventDefault();
    act(app, () => api.post("/v1/members", {displayName: name.value.trim(), role: role.value}), () => { name.value = ""; return reload(); });
  }}, h("h2.card-title", "Add a member"), name, role, h("button.primary", {type: "submit"}, "Add"),
  h("p.muted.small", "This makes a new user; someone who has one already joins through an invitation."));
}

// --- tool registry ----------------------------------------------------------------------------

export function registry(app) {
  const el = page("Tools & MCP servers", "What runs of this workspace may call.");
  loader(el, async (reload) => {
    const [tools, servers] = await Promise.all([
      api.listAll("/v1/tools", "tools", {pageSize: 1000}),
      api.listAll("/v1/mcpServers", "mcpServers", {pageSize: 1000}),
    ]);
    const admin = app.can("admin");
    const remove = (name) => admin ? h("button.danger-ghost.small", {type: "button",
      onclick: () => confirm(`Delete ${name}?`) && act(app, () => api.del(`/v1/${name}`), reload)}, "Delete") : null;
    return [
      h("h2.section-title", "Tools"),
      table(["Name", "Kind", "Description", "#Timeout", ""], tools.map((t) => h("tr", {dataset: {tool: idOf(t.name)}},
        h("td", h("code", idOf(t.name))),
        h("td", t.http ? h("span.chip", `HTTP ${t.http.method}`) : h("span.chip", "MCP")),
        h("td", h("div", t.description || ""), t.http ? h("div.muted.small.mono", t.http.urlTemplate) : null,
          t.http && t.http.credential ? h("div.muted.small", `credential: ${t.http.credential}`) : null),
        h("td.num", t.timeoutMs ? `${num(t.timeoutMs)} ms` : "default"),
        h("td.actions", t.http ? remove(t.name) : null))), "No tools registered.", "tools"),
      h("h2.section-title", "MCP servers"),
      table(["Name", "URL", "#Tools", "Added", ""], servers.map((s) => h("tr",
        h("td", h("code", idOf(s.name))), h("td.mono.small", s.url), h("td.num", num((s.tools || []).length)),
        h("td", ago(s.createTime)), h("td.actions", remove(s.name)))), "No MCP servers.", "mcp-servers"),
    ];
  });
  return {el};
}

// --- secrets ----------------------------------------------------------------------------------

export function secrets(app) {
  const el = page("Secrets", "Credentials tools use. Values are write-only: nothing here can show one.");
  loader(el, async (reload) => {
    const list = await api.listAll("/v1/secrets", "secrets", {pageSize: 1000});
    const admin = app.can("admin");
    const rows = list.map((s) => h("tr", {dataset: {secret: idOf(s.name)}},
      h("td", h("code", idOf(s.name))),
      h("td.num", `v${s.version}`),
      h("td", h("time", {title: s.updateTime}, ago(s.updateTime))),
      h("td.actions", admin ? h("button.danger-ghost.small", {type: "button",
        onclick: () => confirm(`Delete ${idOf(s.name)} and all its versions?`) && act(app, () => api.del(`/v1/${s.name}`), reload)},
      "Delete") : null)));
    return [table(["Name", "#Version", "Updated", ""], rows, "No secrets.", "secrets"), admin ? putSecret(app, reload) : null];
  });
  return {el};
}

function putSecret(app, reload) {
  const name = h("input", {placeholder: "name, e.g. github-token", required: true, pattern: "[a-z0-9][a-z0-9-_]*", "aria-label": "Secret name"});
  const value = h("input", {type: "password", placeholder: "value", required: true, autocomplete: "off", "aria-label": "Secret value"});
  return h("form.inline-form.card", {onsubmit: (e) => {
    e.preventDefault();
    const bytes = new TextEncoder().encode(value.value);
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    act(app, () => api.post(`/v1/secrets/${encodeURIComponent(name.value.trim())}:put`, {value: btoa(binary)}),
      () => { name.value = ""; value.value = ""; return reload(); });
  }}, h("h2.card-title", "Store a secret (or a new version)"), name, value, h("button.primary", {type: "submit"}, "Store"));
}

// --- API keys ---------------------------------------------------------------------------------

export function keys(app) {
  const el = page("API keys", "Keys act as their user in this workspace. A new key is shown once.");
  const shown = h("div");
  el.append(shown);
  loader(el, async (reload) => {
    const [list, people] = await Promise.all([
      api.listAll("/v1/apiKeys", "apiKeys", {pageSize: 1000}),
      api.listAll("/v1/members", "members", {pageSize: 1000}),
    ]);
    const nameOf = new Map(people.map((m) => [m.user, m.displayName]));
    const rows = list.map((k) => h("tr", {dataset: {key: idOf(k.name)}},
      h("td", h("strong", k.displayName), h("div.mono.small.muted", `${k.prefix}_…`)),
      h("td", nameOf.get(k.user) || k.user, " ", h("span.role", {dataset: {role: k.role}}, k.role)),
      h("td", k.personal ? "personal" : "delegated"),
      h("td", h("time", {title: k.createTime}, ago(k.createTime))),
      h("td", k.lastUseTime ? ago(k.lastUseTime) : "never"),
      h("td.actions", h("button.danger-ghost.small", {type: "button",
        onclick: () => confirm(`Revoke ${k.displayName}? Programs using it stop working at once.`)
          && act(app, () => api.del(`/v1/${k.name}`), reload)}, "Revoke"))));
    const label = h("input", {placeholder: "label, e.g. laptop", required: true, "aria-label": "Key label"});
    const user = h("select", {"aria-label": "Acts as"}, people.map((m) => h("option", {value: m.user}, `${m.displayName} (${m.role})`)));
    const form = h("form.inline-form.card", {onsubmit: (e) => {
      e.preventDefault();
      act(app, async () => {
        const made = await api.post("/v1/apiKeys", {displayName: label.value.trim(), user: user.value});
        label.value = "";
        const copy = h("button.ghost.small", {type: "button", onclick: () => copyText(made.key, copy)}, "Copy");
        clear(shown, h("div.callout", {"data-testid": "new-key"},
          h("strong", `Key “${made.apiKey.displayName}” created. Copy it now: it is not shown again.`),
          h("div.key-row", h("code.secret-once", made.key), copy),
          h("button.link", {type: "button", onclick: () => clear(shown)}, "Done, hide it")));
      }, reload);
    }}, h("h2.card-title", "Create a key"), label, user, h("button.primary", {type: "submit"}, "Create"));
    return [table(["Key", "Acts as", "Kind", "Created", "Last used", ""], rows, "No keys.", "api-keys"), form];
  });
  return {el};
}

// --- master key -------------------------------------------------------------------------------

export function masterKey(app) {
  const el = page("Master key", "The vault's key-encryption key versions. Rotation re-wraps data keys without downtime.");
  loader(el, async (reload) => {
    const status = await api.get("/v1/masterKey/status");
    const versions = status.versions || [];
    return [
      h("dl.stats",
        h("div.stat", h("dt", "Active version"), h("dd", {dataset: {stat: "active"}}, `v${status.activeVersion}`)),
        h("div.stat", h("dt", "Re-wrap"), h("dd", status.rewrapRunning ? "running" : "idle")),
        h("div.stat", h("dt", "Versions"), h("dd", num(versions.length)))),
      table(["Version", "State", "#Data keys", "In key file", "Created", "Retired"], versions.map((v) => h("tr",
        h("td", `v${v.version}`), h("td", h("span.chip", (v.state || "").toLowerCase())),
        h("td.num", num(v.dataKeyCount)), h("td", v.inKeyFile ? "yes" : "no"),
        h("td", stamp(v.createTime)), h("td", v.retireTime ? stamp(v.retireTime) : "—"))), "No versions.", "master-key"),
      h("div.card.inline-form", h("p.muted", "Rotating needs a newer version in the key file first; see docs/operations.md."),
        h("button.ghost", {type: "button", onclick: () => confirm("Rotate to the newest master key version?")
          && act(app, () => api.post("/v1/masterKey:rotate", {}), reload)}, "Rotate")),
    ];
  });
  return {el};
}
