"""The run event vocabulary covers every payload of the proto, and every client renders it.

Adding a payload to `RunEvent.payload` in run.proto fails these tests until the payload has
a kind in `agentplatform/events.py` (its type and category) and a renderer in
`ap_cli/render.py`, the two other places a new event touches (CONTRIBUTING.md).
"""

from __future__ import annotations

import io

import pytest
from agentplatform import events
from agentplatform.v1 import run_pb2

from ap_cli.render import EventRenderer

PAYLOADS = [f.name for f in run_pb2.RunEvent.DESCRIPTOR.oneofs_by_name["payload"].fields]


def with_payload(payload: str) -> run_pb2.RunEvent:
    """Build an event whose oneof holds an empty message of the given field."""
    event = run_pb2.RunEvent()
    getattr(event, payload).SetInParent()
    return event


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_payload_has_a_kind_with_a_type_and_a_category(payload: str) -> None:
    """event_type answers for each payload, and its category puts it in a named set."""
    kind = events.KINDS.get(payload)
    assert kind is not None, f"{payload} has no EventKind in agentplatform/events.py"
    assert events.event_type(with_payload(payload)) == kind.type
    assert isinstance(kind.category, events.Category)


def test_the_vocabulary_names_no_payload_the_proto_lacks() -> None:
    """A kind whose field was removed or misspelled is caught, and types are unique."""
    assert set(events.KINDS) == set(PAYLOADS)
    types = [k.type for k in events.KINDS.values()]
    assert len(types) == len(set(types))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_payload_has_a_renderer_in_the_cli(payload: str) -> None:
    """The CLI writes each payload instead of skipping it as one from a newer server."""
    assert payload in EventRenderer(io.StringIO()).rendered_payloads


def test_the_sets_are_the_categories() -> None:
    """Terminal, text, tool and attempt-output sets follow from the categories alone."""
    assert {"run_completed", "run_failed", "run_cancelled"} == events.TERMINAL_PAYLOADS
    assert {"run.completed", "run.failed", "run.cancelled"} == events.TERMINAL_TYPES
    assert {"output_text_delta", "reasoning_summary_delta"} == events.TEXT_PAYLOADS
    assert {p for p in PAYLOADS if p.startswith("tool_call_")} == events.TOOL_PAYLOADS
    assert (
        events.TEXT_PAYLOADS | events.TOOL_PAYLOADS | {"usage"}
    ) == events.ATTEMPT_OUTPUT_PAYLOADS


def test_is_terminal_by_payload_or_by_type() -> None:
    """An event ends its run by its payload, or by its type when the payload is unknown."""
    assert events.is_terminal(with_payload("run_failed"))
    assert not events.is_terminal(with_payload("output_text_delta"))
    assert events.is_terminal(run_pb2.RunEvent(type="run.cancelled"))


def test_an_event_without_a_payload_has_no_type() -> None:
    """event_type refuses an event with nothing in its oneof; event_kind says None."""
    assert events.event_kind(run_pb2.RunEvent()) is None
    with pytest.raises(ValueError, match="no known payload"):
        events.event_type(run_pb2.RunEvent())
