"""Agent Platform SDK: the generated gRPC stubs and an async client for the common path.

    async with Client(endpoint, api_key) as client:
        session = await client.create_session(title="Hello")
        async for event in await client.send_message(session.name, "Hi!"):
            ...

The stubs live in `agentplatform.v1` (public API) and the internal API packages; the client
adds credentials, retries of idempotent calls, and event streams that resume by themselves.
`agentplatform.events` is the run event vocabulary: each payload's type and category.
"""

from agentplatform._client import Client, Page, ReconnectHook, RunEventStream, follow_pages
from agentplatform._errors import ClientError, RpcFailure, describe_rpc_error, is_reconnectable
from agentplatform.events import event_type, is_terminal

__all__ = [
    "Client",
    "ClientError",
    "Page",
    "ReconnectHook",
    "RpcFailure",
    "RunEventStream",
    "describe_rpc_error",
    "event_type",
    "follow_pages",
    "is_reconnectable",
    "is_terminal",
]
