"""The gateway: tool registry and guarded tool calls (behaviour lands with its own issue)."""
