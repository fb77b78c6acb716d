"""Every public RPC, read from the generated descriptors, and a generic way to call one.

A new RPC (or a new service file in agentplatform.v1) shows up here with no edit, so the
matrix and the property tests cover it; a request builder that cannot tell which resource a
`name` or `parent` field names fails loudly instead of skipping the RPC.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import agentplatform.v1
import grpc
from google.protobuf import descriptor, message, message_factory

from services.control_plane.policy import POLICY

# Resource messages and the kind of resource their `name` holds.
KIND_OF_TYPE = {
    "Session": "session",
    "Run": "run",
    "RunEvent": "run",
    "Profile": "profile",
    "Workspace": "workspace",
    "Member": "member",
    "ApiKey": "api_key",
    "Secret": "secret",
    "Tool": "tool",
    "McpServer": "mcp_server",
    "Invitation": "invitation",
}
# Kinds of resource that contain what a `parent` field names, by the child's kind.
PARENT_OF_TYPE = {"Run": "session", "Message": "session", "RunEvent": "run", "ToolCall": "run"}
_VERB = re.compile(r"^(Get|List|Create|Update|Delete|Cancel|Stream|Put|Rotate|Revoke|Accept)")
READ_VERBS = ("Get", "List", "Stream")


@dataclass(frozen=True)
class Rpc:
    """One RPC of a public service."""

    service: descriptor.ServiceDescriptor
    method: descriptor.MethodDescriptor

    @property
    def path(self) -> str:
        """Return the full method path, as the policy table and interceptors see it."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        """Say whether the server streams its answer."""
        return bool(self.method.server_streaming)

    @property
    def reads(self) -> bool:
        """Say whether the RPC only reads, by its AIP verb."""
        return self.method.name.startswith(READ_VERBS)

    def request_class(self) -> type[message.Message]:
        """Return the generated request class."""
        return message_factory.GetMessageClass(self.method.input_type)

    def response_class(self) -> type[message.Message]:
        """Return the generated response class."""
        return message_factory.GetMessageClass(self.method.output_type)

    def noun(self) -> str:
        """Return the resource noun of the method name: StreamRunEvents → RunEvent."""
        noun = _VERB.sub("", self.method.name)
        noun = noun.removesuffix("Status")
        return noun[:-1] if noun.endswith("s") else noun


def public_rpcs() -> list[Rpc]:
    """Return every RPC of every service in the agentplatform.v1 package."""
    found: list[Rpc] = []
    for module_info in pkgutil.iter_modules(agentplatform.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"agentplatform.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            found += [Rpc(service, method) for method in service.methods]
    return sorted(found, key=lambda r: r.path)


def name_kind(rpc: Rpc) -> str:
    """Return the kind of resource a top-level `name` field of the RPC names."""
    noun = rpc.noun()
    kind = KIND_OF_TYPE.get(noun) or KIND_OF_TYPE.get(noun.removesuffix("Event"))
    if kind is None:
        raise LookupError(f"{rpc.path}: teach tests/tenancy/rpcs.py what its name field names")
    return kind


def parent_kind(rpc: Rpc) -> str:
    """Return the kind of resource a top-level `parent` field of the RPC names."""
    kind = PARENT_OF_TYPE.get(rpc.noun())
    if kind is None:
        raise LookupError(f"{rpc.path}: teach tests/tenancy/rpcs.py what its parent names")
    return kind


def _run_kind(rpc: Rpc) -> str:
    """A top-level `run` field names a run (a command on one, e.g. SubmitToolApprovals)."""
    return "run"


# Valid-looking values for fields by name, so that an allowed call gets past validation.
FIELD_DEFAULTS: Mapping[str, Any] = {
    "display_name": "Matrix",
    "title": "matrix",
    "input_text": "hi [[tokens=1]]",
    "role": "viewer",
    "value": b"v",
    # Well-formed but never issued: an accept reaches the servicer, which finds nothing.
    "invitation_token": "apinv_matrix-token-that-was-never-issued",
}


def build_request(rpc: Rpc, names: Callable[[str], str]) -> message.Message:
    """Build a valid-looking request whose `name`/`parent` come from `names(kind)`."""
    request = rpc.request_class()()
    fields = rpc.method.input_type.fields_by_name
    for top, kind_of in (("name", name_kind), ("parent", parent_kind), ("run", _run_kind)):
        if top in fields and fields[top].type == fields[top].TYPE_STRING:
            setattr(request, top, names(kind_of(rpc)))
    for field in rpc.method.input_type.fields:
        if field.message_type is None or field.message_type.name not in KIND_OF_TYPE:
            continue
        resource = getattr(request, field.name)
        for sub in field.message_type.fields:
            # A create ignores its resource's name (output only), so it names nothing.
            if sub.name == "name" and not rpc.method.name.startswith("Create"):
                resource.name = names(KIND_OF_TYPE[field.message_type.name])
            elif sub.name in FIELD_DEFAULTS and sub.type in (sub.TYPE_STRING, sub.TYPE_BYTES):
                setattr(resource, sub.name, FIELD_DEFAULTS[sub.name])
    for field in rpc.method.input_type.fields:
        if field.name in FIELD_DEFAULTS and field.type in (field.TYPE_STRING, field.TYPE_BYTES):
            setattr(request, field.name, FIELD_DEFAULTS[field.name])
    return request


def names_in(request: message.Message) -> list[str]:
    """Return every resource name the builder put into a request."""
    found = [
        getattr(request, f)
        for f in ("name", "parent", "run")
        if f in request.DESCRIPTOR.fields_by_name
        and request.DESCRIPTOR.fields_by_name[f].type == descriptor.FieldDescriptor.TYPE_STRING
    ]
    for field in request.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.name in KIND_OF_TYPE:
            found.append(getattr(request, field.name).name)  # empty on creates
    return [n for n in found if n]


async def call(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: message.Message,
    metadata: tuple[tuple[str, str], ...],
    timeout: float = 10.0,
) -> message.Message:
    """Call an RPC generically; for a stream, return its first message."""
    serialize = type(request).SerializeToString
    deserialize = rpc.response_class().FromString
    if rpc.streaming:
        stream = channel.unary_stream(
            rpc.path, request_serializer=serialize, response_deserializer=deserialize
        )(request, metadata=metadata, timeout=timeout)
        try:
            first = await stream.read()
        finally:
            stream.cancel()
        assert isinstance(first, message.Message), f"{rpc.path} ended without a message"
        return first
    response = await channel.unary_unary(
        rpc.path, request_serializer=serialize, response_deserializer=deserialize
    )(request, metadata=metadata, timeout=timeout)
    assert isinstance(response, message.Message)
    return response


def policy_role(rpc: Rpc) -> str:
    """Return the role the policy table asks for the RPC (KeyError when it is missing)."""
    return POLICY[rpc.path]
