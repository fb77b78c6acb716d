"""Generate the edge's OpenAPI 3.1 document from the public protos, their annotations and comments.

    python -m services.web.openapi           write services/web/openapi.json
    python -m services.web.openapi --check   exit 1 when the committed copy is out of date

The descriptors come from protoc with source info (the generated modules drop comments), so
this runs where grpcio-tools is installed (`make openapi`; `make lint` checks the copy). The
edge serves the committed file at /openapi.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from services.web.app import OPENAPI_PATH
from services.web.login import COOKIE_NAME, CSRF_HEADER

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PACKAGE = "agentplatform.v1"
FieldProto = descriptor_pb2.FieldDescriptorProto

_SCALARS: dict[int, dict[str, Any]] = {
    FieldProto.TYPE_STRING: {"type": "string"},
    FieldProto.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldProto.TYPE_BOOL: {"type": "boolean"},
    FieldProto.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldProto.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldProto.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldProto.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # proto3 JSON writes 64-bit integers as strings.
    FieldProto.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldProto.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldProto.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldProto.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldProto.TYPE_FIXED64: {"type": "string", "format": "uint64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    ".google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated paths."},
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.Struct": {"type": "object"},
    ".google.protobuf.Value": {},
}
_ERROR_SCHEMA = {
    "type": "object",
    "description": "An AIP-193 error: the HTTP status, the gRPC code's name and its details.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status code."},
                "message": {"type": "string"},
                "status": {"type": "string", "description": "The gRPC code, e.g. NOT_FOUND."},
                "details": {
                    "type": "array",
                    "description": "google.rpc.ErrorInfo (a stable reason) and, for bad "
                    "input, google.rpc.BadRequest naming the field.",
                    "items": {
                        "type": "object",
                        "properties": {"@type": {"type": "string"}},
                        "additionalProperties": True,
                    },
                },
            },
        }
    },
}


def descriptor_set(protos: Path = PROTOS) -> descriptor_pb2.FileDescriptorSet:
    """Compile the public protos with their comments into a FileDescriptorSet."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    files = sorted(
        str(p.relative_to(protos)) for p in (protos / "agentplatform/v1").glob("*.proto")
    )
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        code = protoc.main(
            [
                "protoc",
                f"-I{protos}",
                f"-I{well_known}",
                "--include_source_info",
                "--include_imports",
                f"--descriptor_set_out={out}",
                *files,
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed ({code})")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class _Comments:
    """Leading comments of a file's elements, by their source-location path."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self._by_path = {
            tuple(location.path): _clean(location.leading_comments)
            for location in file.source_code_info.location
            if location.leading_comments
        }

    def __call__(self, *path: int) -> str:
        return self._by_path.get(path, "")


def _clean(comment: str) -> str:
    return " ".join(line.strip() for line in comment.strip().splitlines())


class _Builder:
    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self.messages: dict[
            str, tuple[descriptor_pb2.DescriptorProto, _Comments, tuple[int, ...]]
        ] = {}
        self.enums: dict[
            str, tuple[descriptor_pb2.EnumDescriptorProto, _Comments, tuple[int, ...]]
        ] = {}
        self.files = list(files)
        for file in self.files:
            comments = _Comments(file)
            for index, msg in enumerate(file.message_type):
                self._index(f".{file.package}.{msg.name}", msg, comments, (4, index))
            for index, enum in enumerate(file.enum_type):
                self.enums[f".{file.package}.{enum.name}"] = (enum, comments, (5, index))
        self.schemas: dict[str, Any] = {}

    def _index(
        self,
        name: str,
        msg: descriptor_pb2.DescriptorProto,
        comments: _Comments,
        path: tuple[int, ...],
    ) -> None:
        self.messages[name] = (msg, comments, path)
        for index, nested in enumerate(msg.nested_type):
            self._index(f"{name}.{nested.name}", nested, comments, (*path, 3, index))
        for index, enum in enumerate(msg.enum_type):
            self.enums[f"{name}.{enum.name}"] = (enum, comments, (*path, 4, index))

    @staticmethod
    def component(type_name: str) -> str:
        return type_name.removeprefix(f".{PACKAGE}.").lstrip(".")

    def ref(self, type_name: str) -> dict[str, Any]:
        if type_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[type_name])
        if type_name.startswith(".google.protobuf.") and type_name.endswith("Value"):
            return {}  # wrappers: the wrapped scalar
        name = self.component(type_name)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder against recursion
            self.schemas[name] = (
                self._enum(type_name) if type_name in self.enums else self._message(type_name)
            )
        return {"$ref": f"#/components/schemas/{name}"}

    def _enum(self, type_name: str) -> dict[str, Any]:
        enum, comments, path = self.enums[type_name]
        schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.value]}
        if doc := comments(*path):
            schema["description"] = doc
        return schema

    def field(self, field: FieldProto, doc: str) -> dict[str, Any]:
        if field.type == FieldProto.TYPE_MESSAGE:
            entry = self.messages.get(field.type_name)
            if entry is not None and entry[0].options.map_entry:
                value = entry[0].field[1]
                schema: dict[str, Any] = {
                    "type": "object",
                    "additionalProperties": self.field(value, ""),
                }
                return self._describe(schema, doc)
            item = self.ref(field.type_name)
        elif field.type == FieldProto.TYPE_ENUM:
            item = self.ref(field.type_name)
        else:
            item = dict(_SCALARS[field.type])
        if field.label == FieldProto.LABEL_REPEATED:
            item = {"type": "array", "items": item}
        return self._describe(item, doc)

    @staticmethod
    def _describe(schema: dict[str, Any], doc: str) -> dict[str, Any]:
        if doc:
            if "$ref" in schema:  # 3.1 allows siblings of $ref
                schema = {**schema}
            schema["description"] = doc
            if doc.startswith("Output only."):
                schema["readOnly"] = True
        return schema

    def _message(self, type_name: str) -> dict[str, Any]:
        msg, comments, path = self.messages[type_name]
        properties = {
            field.json_name: self.field(field, comments(*path, 2, index))
            for index, field in enumerate(msg.field)
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if doc := comments(*path):
            schema["description"] = doc
        oneofs = [o.name for o in msg.oneof_decl if not o.name.startswith("_")]
        for oneof_index, oneof in enumerate(msg.oneof_decl):
            if oneof.name in oneofs:
                members = [
                    f.json_name
                    for f in msg.field
                    if f.HasField("oneof_index")
                    and f.oneof_index == oneof_index
                    and not f.proto3_optional
                ]
                schema["description"] = (
                    schema.get("description", "") + f" At most one of: {', '.join(members)}."
                ).strip()
        return schema


def _openapi_path(template: str) -> tuple[str, list[tuple[str, str]]]:
    """Return the OpenAPI path of a template and its (parameter, field) pairs."""
    params: list[tuple[str, str]] = []

    def variable(found: re.Match[str]) -> str:
        field, pattern = found.group(1), found.group(2) or "*"
        parts = pattern.split("/")
        out = []
        for index, part in enumerate(parts):
            if part == "*":
                name = parts[index - 1].removesuffix("s") if index else field.split(".")[-1]
                params.append((name, field))
                out.append("{" + name + "}")
            else:
                out.append(part)
        return "/".join(out)

    return re.sub(r"\{([a-z_.]+)(?:=([^}]*))?\}", variable, template), params


def build_document(files: descriptor_pb2.FileDescriptorSet) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the public services in `files`."""
    builder = _Builder(files.file)
    paths: dict[str, dict[str, Any]] = {}
    for file in builder.files:
        if file.package != PACKAGE:
            continue
        comments = _Comments(file)
        for service_index, service in enumerate(file.service):
            for method_index, method in enumerate(service.method):
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                path, params = _openapi_path(getattr(rule, verb))
                doc = comments(6, service_index, 2, method_index)
                operation = _operation(
                    builder, service.name, method, body=rule.body, doc=doc, params=params
                )
                paths.setdefault(path, {})[verb] = operation
    paths.update(_auth_paths(builder))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent Platform HTTP API",
            "version": "v1",
            "description": "HTTP/JSON transcoding of the public gRPC API (proto3 canonical "
            "JSON), with server-sent events for streams. Generated from protos/ by "
            "services/web/openapi.py; docs/http.md explains it.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key."},
                "cookieAuth": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE_NAME,
                    "description": f"The session cookie of POST /auth/login; requests that "
                    f"change state also need the {CSRF_HEADER} header.",
                },
            },
            "schemas": dict(sorted({**builder.schemas, "Error": _ERROR_SCHEMA}.items())),
        },
    }


def _operation(
    builder: _Builder,
    service: str,
    method: descriptor_pb2.MethodDescriptorProto,
    *,
    body: str,
    doc: str,
    params: list[tuple[str, str]],
) -> dict[str, Any]:
    request, request_comments, request_path = builder.messages[method.input_type]
    path_fields = {field for _, field in params}
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": f"A segment of `{field}`.",
        }
        for name, field in params
    ]
    if body != "*":
        for index, field in enumerate(request.field):
            if field.name in path_fields or field.name == body:
                continue
            schema = builder.field(field, request_comments(*request_path, 2, index))
            if "$ref" in schema and "type" not in schema:
                continue  # a message: not a query parameter
            description = schema.pop("description", "")
            parameters.append(
                {"name": field.json_name, "in": "query", "schema": schema}
                | ({"description": description} if description else {})
            )
    operation: dict[str, Any] = {
        "operationId": method.name,
        "tags": [service],
        "summary": doc.split(". ", maxsplit=1)[0].rstrip(".") if doc else method.name,
        "description": doc,
        "parameters": parameters,
    }
    if body:
        if body == "*":
            schema = builder.ref(method.input_type)
        else:
            field = next(f for f in request.field if f.name == body)
            schema = builder.ref(field.type_name)
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    error = {
        "description": "An error (AIP-193).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if method.server_streaming:
        _, item_type = _stream_item(builder, method.output_type)
        parameters += [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "schema": {"type": "string"},
                "description": "Resume after this event (EventSource sends it by itself).",
            },
            {
                "name": "after",
                "in": "query",
                "schema": {"type": "string"},
                "description": "Resume after this event, for a first connection.",
            },
        ]
        operation["responses"] = {
            "200": {
                "description": "Server-sent events: `id` is the event's position (the "
                "cursor), `event` its type, `data` its JSON; keep-alive comments while idle.",
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "x-event-data": builder.ref(item_type),
                    }
                },
            },
            "204": {"description": "Nothing after the cursor, and the stream has ended."},
            "default": error,
        }
    else:
        operation["responses"] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": builder.ref(method.output_type)}},
            },
            "default": error,
        }
    return operation


def _stream_item(builder: _Builder, output_type: str) -> tuple[str, str]:
    response, _, _ = builder.messages[output_type]
    (item,) = [f for f in response.field if f.type == FieldProto.TYPE_MESSAGE]
    return item.json_name, item.type_name


def _auth_paths(builder: _Builder) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}
    session_properties: dict[str, Any] = {
        "csrfToken": {"type": "string", "description": f"Send it as {CSRF_HEADER}."},
        "expireTime": {"type": "string", "format": "date-time"},
    }
    session = {"type": "object", "properties": session_properties}
    login_answer = {
        "type": "object",
        "properties": {"profile": builder.ref(f".{PACKAGE}.Profile"), **session_properties},
    }

    def answer(schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "default": {
                "description": "An error (AIP-193).",
                "content": {"application/json": {"schema": error}},
            },
        }

    return {
        "/auth/login": {
            "post": {
                "operationId": "Login",
                "tags": ["Browser sign-in"],
                "summary": "Exchange an API key for the session cookie",
                "description": "Sets an HttpOnly, SameSite=Strict cookie (Secure over TLS) "
                "that holds the key sealed; never put the key in a URL.",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["apiKey"],
                                "properties": {"apiKey": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": answer(login_answer),
            }
        },
        "/auth/session": {
            "get": {
                "operationId": "GetLogin",
                "tags": ["Browser sign-in"],
                "summary": "Return the signed-in cookie's CSRF token and expiry",
                "security": [{"cookieAuth": []}],
                "responses": answer(session),
            }
        },
        "/auth/logout": {
            "post": {
                "operationId": "Logout",
                "tags": ["Browser sign-in"],
                "summary": "Clear the session cookie and end its open streams",
                "security": [{"cookieAuth": []}],
                "responses": {"204": {"description": "Signed out."}},
            }
        },
    }


def render(document: dict[str, Any]) -> str:
    """Return the document as committed: two-space JSON with a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the document, or with --check compare it with the committed copy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the copy is out of date")
    args = parser.parse_args(argv)
    text = render(build_document(descriptor_set()))
    if args.check:
        current = OPENAPI_PATH.read_text(encoding="utf-8") if OPENAPI_PATH.exists() else ""
        if current != text:
            print(
                f"{OPENAPI_PATH.relative_to(ROOT)} is out of date: run `make openapi`",
                file=sys.stderr,
            )
            raise SystemExit(1)
        print(f"{OPENAPI_PATH.relative_to(ROOT)} is current")
        return
    OPENAPI_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {OPENAPI_PATH.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
