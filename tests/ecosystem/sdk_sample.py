"""A program using both SDK clients, as a user would write it.

`tests/ecosystem/test_sdk.py` type-checks it with `mypy --strict` against the installed wheel
and runs it against a real stack; it prints one line per check and exits 0 when all hold.
"""

from __future__ import annotations

import asyncio

from agentplatform import (
    AsyncClient,
    AsyncRunEventStream,
    Client,
    NotFound,
    RunAlreadyActive,
    RunEventStream,
)
from agentplatform.v1 import run_pb2, session_pb2

NO_SUCH_SESSION = "sessions/00000000-0000-4000-8000-000000000000"


def blocking() -> list[str]:
    """Use the blocking client: a reply, a listing, a stream and a typed error."""
    with Client() as client:
        session: session_pb2.Session = client.create_session(title="sample")
        reply: str = client.send_message(session.name, "one [[tokens=2]]")
        names = [s.name for s in client.list_sessions(page_size=1)]
        run: run_pb2.Run = client.create_run(session.name, "two [[tokens=2]]")
        stream: RunEventStream = client.stream_run_events(run.name)
        kinds = [event.WhichOneof("payload") or "" for event in stream]
        missing = ""
        try:
            client.get_session(NO_SUCH_SESSION)
        except NotFound as err:
            missing = err.resource or ""
        return [reply, str(session.name in names), kinds[-1], missing]


async def concurrent() -> list[str]:
    """Use the asyncio client: the same calls, awaited, and a refused second run."""
    async with AsyncClient() as client:
        session = await client.create_session(title="sample async")
        run = await client.create_run(session.name, "[[tokens=20]] [[delay_ms=20]]")
        active = False
        try:
            await client.create_run(session.name, "too soon")
        except RunAlreadyActive as err:
            active = err.active_run == run.name
        stream: AsyncRunEventStream = client.stream_run_events(run.name)
        last = [event.type async for event in stream][-1]
        messages = [m.text async for m in client.list_messages(session.name)]
        return [str(active), last, str(len(messages))]


if __name__ == "__main__":
    for line in blocking() + asyncio.run(concurrent()):
        print(line)
