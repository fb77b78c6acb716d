// The dashboard's shell: who is signed in, the navigation their role may use, the theme,
// and a router from paths (/sessions/…) to pages. Each page is a module whose render()
// returns {el, destroy}; destroy closes its streams when the user navigates away.

import * as api from "./api.js";
import {clear, h, notFound, svg} from "./dom.js";
import {render as signin} from "./pages/signin.js";
import {render as sessions} from "./pages/sessions.js";
import {render as session} from "./pages/session.js";
import {render as run} from "./pages/run.js";
import {render as tools} from "./pages/tools.js";
import * as admin from "./pages/admin.js";

const RANK = {viewer: 0, member: 1, admin: 2, owner: 3};

// Path → page; `role` is the lowest role offered the page (the edge refuses the rest anyway).
const ROUTES = [
  {path: /^\/sessions\/?$/, page: sessions, nav: "sessions"},
  {path: /^\/sessions\/([^/]+)\/?$/, page: session, nav: "sessions"},
  {path: /^\/sessions\/([^/]+)\/runs\/([^/]+)\/?$/, page: run, nav: "sessions"},
  {path: /^\/tools\/?$/, page: tools, nav: "tools"},
  {path: /^\/admin\/members\/?$/, page: admin.members, nav: "members"},
  {path: /^\/admin\/registry\/?$/, page: admin.registry, nav: "registry"},
  {path: /^\/admin\/secrets\/?$/, page: admin.secrets, nav: "secrets", role: "member"},
  {path: /^\/admin\/keys\/?$/, page: admin.keys, nav: "keys", role: "owner"},
  {path: /^\/admin\/master-key\/?$/, page: admin.masterKey, nav: "master-key", role: "owner"},
];

// 24×24 stroke icons, one path each.
const ICONS = {
  sessions: "M4 5h16v11H8l-4 4z",
  tools: "M14 6a4 4 0 0 0-5 5l-5 5 3 3 5-5a4 4 0 0 0 5-5l-2 2-2-1-1-2z",
  members: "M9 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6zm-6 9c0-3 3-5 6-5s6 2 6 5M16 5a3 3 0 0 1 0 6m2 4c2 .5 3 2 3 5",
  registry: "M4 4h7v7H4zM13 4h7v7h-7zM4 13h7v7H4zM13 13h7v7h-7z",
  secrets: "M6 11h12v9H6zM8 11V8a4 4 0 0 1 8 0v3",
  keys: "M8 15a4 4 0 1 1 3-3l8 0v3h-2v2h-3v-2h-3",
  "master-key": "M12 3l8 3v6c0 5-4 8-8 9-4-1-8-4-8-9V6z",
};

function icon(id) {
  return svg("svg", {viewBox: "0 0 24 24", width: 18, height: 18, fill: "none", stroke: "currentColor",
    "stroke-width": 1.8, "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true",
    class: "nav-icon"}, svg("path", {d: ICONS[id]}));
}

const NAV = [
  {id: "sessions", href: "/sessions", label: "Sessions"},
  {id: "tools", href: "/tools", label: "Tool calls"},
  {heading: "Workspace"},
  {id: "members", href: "/admin/members", label: "Members"},
  {id: "registry", href: "/admin/registry", label: "Tools & MCP"},
  {id: "secrets", href: "/admin/secrets", label: "Secrets", role: "member"},
  {id: "keys", href: "/admin/keys", label: "API keys", role: "owner"},
  {id: "master-key", href: "/admin/master-key", label: "Master key", role: "owner"},
];

const app = {
  me: null,
  workspace: null,
  workspaces: [],
  current: null,
  can(role) {
    return !!this.me && RANK[this.me.role] >= RANK[role];
  },
  navigate(path, {replace = false} = {}) {
    if (replace) history.replaceState(null, "", path);
    else history.pushState(null, "", path);
    route();
  },
  toast(text, tone = "info") {
    const el = h(`div.toast.${tone}`, {role: "status"}, text);
    document.body.append(el);
    setTimeout(() => el.remove(), 4000);
  },
};

// --- theme ----------------------------------------------------------------------------------

function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function currentTheme() {
  const chosen = localStorage.getItem("ap-theme");
  if (chosen === "light" || chosen === "dark") return chosen;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function toggleTheme() {
  const next = currentTheme() === "dark" ? "light" : "dark";
  localStorage.setItem("ap-theme", next);
  applyTheme(next);
  for (const button of document.querySelectorAll(".theme-toggle")) themeLabel(button);
}

function themeLabel(button) {
  const dark = currentTheme() === "dark";
  button.textContent = dark ? "☀" : "☾";
  button.setAttribute("aria-label", dark ? "Use the light theme" : "Use the dark theme");
  button.title = button.getAttribute("aria-label");
}

applyTheme(localStorage.getItem("ap-theme"));

// --- the shell ------------------------------------------------------------------------------

const root = document.getElementById("app");
let main = null;
let live = null;

function shell() {
  const themeButton = h("button.icon.theme-toggle", {type: "button", onclick: toggleTheme});
  themeLabel(themeButton);
  const nav = h("nav.nav", {"aria-label": "Main"},
    NAV.filter((item) => !item.role || app.can(item.role)).map((item) =>
      item.heading
        ? h("div.nav-heading", item.heading)
        : h("a.nav-link", {href: item.href, dataset: {nav: item.id}},
          icon(item.id), h("span", item.label))));
  const switcher = workspaceSwitcher();
  live = h("span.live", {role: "status", "aria-live": "polite"});
  main = h("main.main", {id: "main", tabindex: "-1"});
  const menu = h("button.icon.menu-toggle", {
    type: "button", "aria-label": "Menu",
    onclick: () => root.classList.toggle("nav-open"),
  }, "☰");
  clear(root,
    h("a.skip", {href: "#main"}, "Skip to content"),
    h("aside.sidebar",
      h("div.brand", h("img", {src: "/favicon.svg", alt: "", width: 24, height: 24}),
        h("span", "Agent Platform"), menu),
      nav,
      h("div.sidebar-foot",
        switcher,
        h("div.whoami", {"data-testid": "whoami"},
          h("div.avatar", {"aria-hidden": "true"}, initials(app.me.displayName)),
          h("div.who",
            h("div.who-name", app.me.displayName),
            h("div.who-meta", h("span.role", {dataset: {role: app.me.role}}, app.me.role),
              " in ", h("span.ws-name", app.workspace ? app.workspace.displayName : app.me.workspace)))),
        h("div.foot-actions",
          themeButton,
          h("button.ghost.signout", {type: "button", onclick: signOut}, "Sign out")))),
    h("div.content", h("header.topbar", live), main));
  root.classList.remove("booting", "bare");
  root.removeAttribute("aria-busy");
}

function workspaceSwitcher() {
  if (app.workspaces.length < 2) return null;
  const select = h("select.ws-select", {"aria-label": "Workspace", onchange: () => {
    const chosen = app.workspaces.find((w) => w.name === select.value);
    select.value = app.me.workspace;
    app.navigate(`/signin?workspace=${encodeURIComponent(chosen.name)}`
      + `&label=${encodeURIComponent(chosen.displayName)}`);
  }}, app.workspaces.map((w) => h("option", {value: w.name, selected: w.name === app.me.workspace},
    `${w.displayName} · ${w.role}`)));
  return h("label.ws-switch", h("span.muted", "Workspace"), select);
}

function initials(name) {
  return (name || "?").split(/\s+/).map((w) => w[0]).join("").slice(0, 2).toUpperCase();
}

async function signOut() {
  await api.signOut();
  app.me = null;
  main = null;
  app.navigate("/signin");
}

async function loadIdentity(profile) {
  app.me = profile;
  const [workspace, workspaces] = await Promise.all([
    api.get(`/v1/${profile.workspace}`).catch(() => null),
    api.listAll("/v1/workspaces", "workspaces").catch(() => []),
  ]);
  app.workspace = workspace;
  app.workspaces = workspaces;
}

// --- routing --------------------------------------------------------------------------------

async function route() {
  if (app.current && app.current.destroy) app.current.destroy();
  app.current = null;
  root.classList.remove("nav-open");
  const {pathname, search} = location;
  const query = new URLSearchParams(search);
  if (pathname === "/signin" || !app.me) {
    if (pathname !== "/signin") {
      history.replaceState(null, "", `/signin?next=${encodeURIComponent(pathname + search)}`);
      return route();
    }
    root.classList.remove("booting");
    root.classList.add("bare");
    root.removeAttribute("aria-busy");
    main = null;
    app.current = signin(app, query, async (profile) => {
      await loadIdentity(profile);
      shell();
      const next = query.get("next");
      app.navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/sessions",
        {replace: true});
    });
    clear(root, app.current.el);
    return;
  }
  if (!main) shell();
  if (pathname === "/" || pathname === "") return app.navigate("/sessions", {replace: true});
  for (const r of ROUTES) {
    const found = pathname.match(r.path);
    if (!found) continue;
    for (const link of document.querySelectorAll(".nav-link")) {
      if (link.dataset.nav === r.nav) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (r.role && !app.can(r.role)) return show(notAllowed(r.role));
    const page = r.page(app, found.slice(1).map(decodeURIComponent), query);
    app.current = page;
    return show(page.el);
  }
  show(notFound("There is no page here."));
}

function show(el) {
  clear(main, el);
  main.scrollTop = 0;
  live.textContent = "";
}

function notAllowed(role) {
  return h("section.empty-state", h("h1", "Not available"),
    h("p.muted", `This page needs the ${role} role; you are ${app.me.role}.`));
}

// Same-origin links route in the page; anything else is the browser's.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || link.target || link.hasAttribute("download") || event.defaultPrevented) return;
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/v1/")
      || url.pathname === "/openapi.json" || (url.hash && url.pathname === location.pathname)) return;
  event.preventDefault();
  app.navigate(url.pathname + url.search);
});
window.addEventListener("popstate", route);

api.whenSignedOut(() => {
  if (app.me) {
    app.me = null;
    main = null;
    app.navigate(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, {replace: true});
  }
});

async function boot() {
  try {
    const profile = await api.restore();
    if (profile) await loadIdentity(profile);
  } catch {
    // The edge is away: show sign-in, which says so when it is tried.
  }
  route();
}

boot();
