// Sign in with an API key: the edge exchanges it for an HttpOnly cookie; the key is never
// kept by the page (no storage, no URL). A key is bound to one workspace, so switching
// workspace is signing in with that workspace's key.

import * as api from "../api.js";
import {h} from "../dom.js";

export function render(app, query, done) {
  const target = query.get("label");
  const input = h("input#api-key", {
    type: "password", name: "apiKey", autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "ap_…", "aria-describedby": "key-help",
  });
  const error = h("p.form-error", {role: "alert"});
  const button = h("button.primary.wide", {type: "submit"}, "Sign in");
  const form = h("form.signin-form", {
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      button.disabled = true;
      button.textContent = "Signing in…";
      try {
        const profile = await api.signIn(input.value.trim());
        input.value = "";
        await done(profile);
      } catch (err) {
        error.textContent = err.status === "UNAUTHENTICATED"
          ? "That API key is not valid, or it was revoked."
          : err.message;
        button.disabled = false;
        button.textContent = "Sign in";
        input.focus();
      }
    },
  },
  h("label", {for: "api-key"}, "API key"),
  input,
  h("p.help#key-help", target
    ? `Keys belong to one workspace: paste a key for ${target}.`
    : "Paste the key that make run printed, or one an owner made for you."),
  error,
  button);
  setTimeout(() => input.focus(), 0);
  const el = h("div.signin",
    h("section.signin-card",
      h("div.brand.big", h("img", {src: "/favicon.svg", alt: "", width: 36, height: 36}),
        h("span", "Agent Platform")),
      h("h1", target ? `Sign in to ${target}` : "Sign in"),
      h("p.muted", "Watch runs think, call tools and answer, live."),
      form,
      h("p.fine", "The key is exchanged for a session cookie and is not stored in this browser."),
      app.me ? h("a", {href: "/sessions"}, "← Back") : null));
  return {el};
}
