"""Serve a deterministic model for development and tests, in three providers' wire formats.

This is not an LLM. It answers OpenAI Chat Completions (``POST /v1/chat/completions``),
OpenAI Responses (``POST /v1/responses``) and Anthropic Messages (``POST /v1/messages``)
with text derived from the last user message, streamed or whole, so tests and ``make run``
get real HTTP streaming without a model provider. Directives in that message
(``[[tokens=N]]``, ``[[fail=CODE]]``, ``[[hang]]``, ``[[tool=NAME]]``, ``[[rate_limit=N]]``
…) choose delays, failures, hangs, tool calls, reasoning and usage, the same in every
format; docs/devmodel.md lists them all.

    script.py            the directives and the reply they call for, in no wire format
    wire.py              what a wire format supplies, and the helpers formats share
    chat_completions.py  ┐
    responses.py         ├ one encoder per format: requests in; replies, streams, errors out
    messages.py          ┘
    server.py            DevModel: the HTTP server and what every format shares

Run it with ``python -m devtools.devmodel --host 127.0.0.1 --port 8089``.
"""

from devtools.devmodel.server import DevModel
from devtools.devmodel.wire import MODEL_ID

__all__ = ["MODEL_ID", "DevModel"]
