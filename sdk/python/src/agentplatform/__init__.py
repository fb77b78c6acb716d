"""Agent Platform SDK: a blocking and an asyncio client, typed errors, and the gRPC stubs.

    from agentplatform import Client

    with Client() as client:                   # AP_ENDPOINT/AP_API_KEY, else client.json
        session = client.create_session(title="Hello")
        print(client.send_message(session.name, "Hi!"))

`Client` and `AsyncClient` have the same methods, one per public RPC (`AsyncClient`'s are
awaited, its lists and streams iterated with `async for`). Results are the messages of
`agentplatform.v1`; failures raise `APError` subclasses carrying the ErrorInfo reason;
`agentplatform.events` is the run event vocabulary. `docs/sdk.md` is the guide.
"""

from agentplatform._client import AsyncClient, Client
from agentplatform._config import ClientConfig, ConfigError, default_config_path
from agentplatform._errors import (
    AlreadyExists,
    APError,
    BudgetExceeded,
    ConcurrentUpdate,
    DeadlineExceeded,
    FailedPrecondition,
    HostedModelUnavailable,
    InternalError,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    RateLimited,
    RunAlreadyActive,
    RunCancelled,
    RunError,
    RunFailed,
    ToolCallNotPending,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    VersionMismatch,
    error_from_rpc,
)
from agentplatform._methods import MAX_INPUT_BYTES, ConcurrencyPolicy, UsageDimension
from agentplatform._streams import AsyncRunEventStream, ReconnectHook, RunEventStream
from agentplatform._transport import SDK_VERSION as __version__
from agentplatform.events import event_type, is_terminal

__all__ = [
    "MAX_INPUT_BYTES",
    "APError",
    "AlreadyExists",
    "AsyncClient",
    "AsyncRunEventStream",
    "BudgetExceeded",
    "Client",
    "ClientConfig",
    "ConcurrencyPolicy",
    "ConcurrentUpdate",
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HostedModelUnavailable",
    "InternalError",
    "InvalidArgument",
    "LimitExceeded",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ReconnectHook",
    "RunAlreadyActive",
    "RunCancelled",
    "RunError",
    "RunEventStream",
    "RunFailed",
    "ToolCallNotPending",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UsageDimension",
    "VersionMismatch",
    "__version__",
    "default_config_path",
    "error_from_rpc",
    "event_type",
    "is_terminal",
]
