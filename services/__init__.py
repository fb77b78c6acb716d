"""Agent Platform services: one package per bounded context, plus the shared `rpc` plumbing."""
