"""HTTP request → proto request, and proto → canonical JSON (google/api/http.proto rules).

Path variables set their fields; the body fills the field `body` names (or, for "*", the
whole request); every other field may come from the query string, by its JSON or proto
name ("pageSize" or "page_size", "a.b" for a nested one, a repeated field by repeating it).
JSON is proto3's canonical mapping (`json_format`). Bad input is an INVALID_ARGUMENT that
names the field: an unknown field, a value of the wrong type, a body that is not JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

from google.protobuf import descriptor, json_format, message
from google.protobuf.message_factory import GetMessageClass as message_factory_class

from services.rpc.errors import invalid_argument
from services.web.routes import Route

FieldDescriptor = descriptor.FieldDescriptor
_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def build_request(
    route: Route,
    path_values: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    body: bytes,
) -> message.Message:
    """Build the RPC's request from the path variables, query string and body."""
    request = route.request_class()()
    if route.body:
        _apply_body(route.body, body, request)
    elif body.strip():
        raise invalid_argument("body", "This method takes no request body.")
    _apply_query(route, query, request, set(path_values))
    for path, value in path_values.items():
        _set_path_field(request, path, value)
    return request


def to_json(msg: message.Message) -> bytes:
    """Render a message as canonical proto3 JSON (lowerCamelCase names, defaults omitted)."""
    return json.dumps(to_dict(msg), separators=(",", ":"), ensure_ascii=False).encode()


def to_dict(msg: message.Message) -> dict[str, Any]:
    """Return a message's canonical JSON as a dict, exactly as json_format writes it.

    json_format.MessageToDict walks every field in Python; a page of 5,000 run events took
    it most of a second. This walks only the fields set (ListFields, in C) and hands any
    shape it does not do itself — floats, maps, well-known types other than Timestamp and
    Duration — to json_format, so the output stays the same (tests/web/test_transcode.py).
    """
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        name, repeated, convert = _CONVERTERS.get(field) or _converter(field)
        out[name] = [convert(item) for item in value] if repeated else convert(value)
    return out


_Converter = Any
# field → (its JSON name, whether it is a list, how each value converts)
_CONVERTERS: dict[FieldDescriptor, tuple[str, bool, _Converter]] = {}
_TIME_TYPES = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})
_STRING_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_PLAIN = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
    }
)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _converter(field: FieldDescriptor) -> tuple[str, bool, _Converter]:
    """Return (and remember) how one field's value becomes JSON."""
    kind = field.type
    convert: _Converter
    if kind in _PLAIN:
        convert = _same
    elif kind in _STRING_INTEGERS:
        convert = str
    elif kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        convert = _enum_name(field.enum_type)
    elif field.message_type is not None and not _is_map(field):
        name = field.message_type.full_name
        if name in _TIME_TYPES:
            convert = _time
        elif name.startswith("google.protobuf."):
            convert = json_format.MessageToDict
        else:
            convert = to_dict
    else:  # floats, bytes, maps: json_format's own rules
        convert = _by_json_format(field)
    found = (field.json_name, field.is_repeated and not _is_map(field), convert)
    _CONVERTERS[field] = found
    return found


def _enum_name(enum: descriptor.EnumDescriptor) -> _Converter:
    def convert(value: int) -> str | int:
        known = enum.values_by_number.get(value)
        return known.name if known is not None else value

    return convert


def _same(value: Any) -> Any:
    return value


def _time(value: Any) -> str:
    return cast(str, value.ToJsonString())


def _by_json_format(field: FieldDescriptor) -> _Converter:
    container = field.containing_type
    assert container is not None

    def convert(value: Any) -> Any:
        holder = message_factory_class(container)()
        target = getattr(holder, field.name)
        if _is_map(field):
            for key, item in value.items():
                if (
                    field.message_type is not None
                    and hasattr(item, "CopyFrom")
                    and (field.message_type.fields_by_name["value"].message_type is not None)
                ):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
            return json_format.MessageToDict(holder)[field.json_name]
        if field.is_repeated:
            target.append(value)
            return json_format.MessageToDict(holder)[field.json_name][0]
        setattr(holder, field.name, value)
        return json_format.MessageToDict(holder)[field.json_name]

    return convert


def _apply_body(body_field: str, body: bytes, request: message.Message) -> None:
    text = body.strip()
    if not text:
        return  # an empty body is an empty message: `curl -X POST …:rotate` needs none
    try:
        parsed = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise invalid_argument("body", f"The request body is not valid JSON: {err}.") from None
    if body_field == "*":
        target, prefix = request, ""
    else:
        field = request.DESCRIPTOR.fields_by_name[body_field]
        target, prefix = getattr(request, body_field), field.json_name
    if not isinstance(parsed, dict):
        raise invalid_argument(prefix or "body", "The request body must be a JSON object.")
    _check_known_fields(parsed, _descriptor(target), prefix)
    _parse_into(parsed, target, prefix)


def _parse_into(value: dict[str, Any], target: message.Message, prefix: str) -> None:
    try:
        json_format.ParseDict(value, target)
    except json_format.ParseError as err:
        text = str(err)
        names = _FAILED_FIELD.findall(text)
        where = ".".join(filter(None, [prefix, *names])) or prefix or "body"
        detail = _FAILED_FIELD.sub("", text).split("\n")[0].rstrip(".")
        detail = re.sub(r"\.? at [\w.]+$", "", detail.rstrip("."))
        detail = detail.replace("expected string or bytes-like object", "expected a JSON string")
        raise invalid_argument(where, f"Invalid value for {where}: {detail}.") from None


def _descriptor(msg: message.Message) -> descriptor.Descriptor:
    return cast(descriptor.Descriptor, msg.DESCRIPTOR)


def _fields(desc: descriptor.Descriptor) -> dict[str, FieldDescriptor]:
    by_name = {f.json_name: f for f in desc.fields}
    by_name.update((f.name, f) for f in desc.fields)
    return by_name


def _has_own_json_form(desc: descriptor.Descriptor) -> bool:
    # Timestamp, Duration, FieldMask, Struct, Any, wrappers…: not field-by-field objects.
    return desc.file.name.startswith("google/protobuf/") and desc.name != "Empty"


def _check_known_fields(value: Any, desc: descriptor.Descriptor, prefix: str) -> None:
    """Raise INVALID_ARGUMENT naming the first field of `value` the message does not have."""
    if not isinstance(value, dict) or _has_own_json_form(desc):
        return
    fields = _fields(desc)
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else key
        field = fields.get(key)
        if field is None:
            raise invalid_argument(path, f"Unknown field {path!r}.")
        sub = field.message_type
        if sub is None:
            continue
        if sub.GetOptions().map_entry:
            value_type = sub.fields_by_name["value"].message_type
            if value_type is not None and isinstance(item, dict):
                for map_key, map_value in item.items():
                    _check_known_fields(map_value, value_type, f"{path}.{map_key}")
        elif field.is_repeated:
            for index, element in enumerate(item if isinstance(item, list) else []):
                _check_known_fields(element, sub, f"{path}[{index}]")
        else:
            _check_known_fields(item, sub, path)


def _apply_query(
    route: Route, query: Iterable[tuple[str, str]], request: message.Message, path: set[str]
) -> None:
    values: dict[str, Any] = {}
    for key, raw in query:
        if route.body == "*":
            raise invalid_argument(key, f"{key!r} belongs in the request body, not the query.")
        proto_path, field = _query_field(_descriptor(request), key)
        top = proto_path.split(".")[0]
        if proto_path in path or top == route.body:
            raise invalid_argument(key, f"{key!r} cannot be set in the query string.")
        node = values
        for part in proto_path.split(".")[:-1]:
            node = node.setdefault(part, {})
        leaf = proto_path.rsplit(".", 1)[-1]
        converted = _query_value(key, field, raw)
        if field.is_repeated:
            node.setdefault(leaf, []).append(converted)
        elif leaf in node:
            raise invalid_argument(key, f"{key!r} is given more than once.")
        else:
            node[leaf] = converted
    if values:
        from_query = type(request)()
        _parse_into(values, from_query, "")
        request.MergeFrom(from_query)


def _query_field(desc: descriptor.Descriptor, key: str) -> tuple[str, FieldDescriptor]:
    parts = key.split(".")
    names: list[str] = []
    field: FieldDescriptor | None = None
    for index, part in enumerate(parts):
        field = _fields(desc).get(part)
        if field is None:
            raise invalid_argument(key, f"Unknown query parameter {key!r}.")
        names.append(field.name)
        last = index == len(parts) - 1
        sub = field.message_type
        if not last:
            if sub is None or field.is_repeated or (_has_own_json_form(sub)):
                raise invalid_argument(key, f"Unknown query parameter {key!r}.")
            desc = sub
        elif sub is not None and (sub.GetOptions().map_entry or not _has_own_json_form(sub)):
            raise invalid_argument(key, f"{key!r} is a message; set its fields one by one.")
    assert field is not None
    return ".".join(names), field


def _query_value(key: str, field: FieldDescriptor, raw: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        if raw not in ("true", "false"):
            raise invalid_argument(key, f"{key!r} must be true or false.")
        return raw == "true"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(raw)
        except ValueError:
            raise invalid_argument(key, f"{key!r} must be a number.") from None
    if field.type in _INTEGER_TYPES and not re.fullmatch(r"-?[0-9]+", raw):
        raise invalid_argument(key, f"{key!r} must be an integer.")
    return raw


def _set_path_field(request: message.Message, path: str, value: str) -> None:
    *parents, leaf = path.split(".")
    target = request
    for part in parents:
        target = getattr(target, part)
    current = getattr(target, leaf)
    if current and current != value:
        raise invalid_argument(
            path, f"{path} in the body ({current!r}) differs from the URL ({value!r})."
        )
    setattr(target, leaf, value)
