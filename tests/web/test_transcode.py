"""The edge's proto → JSON writes exactly what json_format writes, for every public message."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import agentplatform.v1
from google.protobuf import descriptor, json_format, message, message_factory

from services.web.transcode import to_dict

FieldDescriptor = descriptor.FieldDescriptor
_SAMPLES = {
    FieldDescriptor.TYPE_STRING: "text ✓",
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_BYTES: b"\x00\xffbytes",
    FieldDescriptor.TYPE_DOUBLE: 0.1,
    FieldDescriptor.TYPE_FLOAT: 0.1,
}


def _fill(msg: message.Message, depth: int = 0) -> message.Message:
    """Set every field of `msg` (and of its messages, two levels down) to a sample value."""
    for field in msg.DESCRIPTOR.fields:
        if field.containing_oneof is not None and msg.WhichOneof(field.containing_oneof.name):
            continue  # one member of each oneof
        value = getattr(msg, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if entry.fields_by_name["value"].message_type is None:
                value["k"] = _sample(entry.fields_by_name["value"])
            elif depth < 2:
                _fill(value["k"], depth + 1)
        elif field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                target = value.add() if field.is_repeated else value
                target.FromMilliseconds(1_700_000_000_123)
            elif field.message_type.full_name == "google.protobuf.Duration":
                (value.add() if field.is_repeated else value).FromMilliseconds(1500)
            elif depth < 2:
                _fill(value.add() if field.is_repeated else value, depth + 1)
        elif field.is_repeated:
            value.append(_sample(field))
        else:
            setattr(msg, field.name, _sample(field))
    return msg


def _sample(field: Any) -> object:
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    return _SAMPLES.get(field.type, 2**40 + 7 if "64" in _type_name(field) else 42)


def _type_name(field: Any) -> str:
    return next(
        k for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_") and v == field.type
    )


def _messages() -> list[descriptor.Descriptor]:
    found = []
    for info in pkgutil.iter_modules(agentplatform.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"agentplatform.v1.{info.name}")
            found += list(module.DESCRIPTOR.message_types_by_name.values())
    return found


def test_every_public_message_renders_as_json_format_renders_it() -> None:
    """Filled and empty, each message's JSON is json_format's, key for key."""
    messages = _messages()
    assert len(messages) > 50
    for desc in messages:
        cls = message_factory.GetMessageClass(desc)
        for msg in (cls(), _fill(cls())):
            assert to_dict(msg) == json_format.MessageToDict(msg), desc.full_name
