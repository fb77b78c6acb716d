"""JSON Schema (Draft 2020-12) for tool parameters: checked at registration, applied per call.

No `$ref` is ever resolved over the network: validators get an empty `referencing.Registry`
(jsonschema's default registry fetches remote references), and a schema that refers to
anything but its own `#...` fragments is refused when registered.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import referencing
from jsonschema import Draft202012Validator

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_ERRORS_SHOWN = 5
_EMPTY_REGISTRY: referencing.Registry[Any] = referencing.Registry()


class SchemaError(ValueError):
    """A parameters schema is not acceptable; the message says why."""


def _walk(node: Any, depth: int) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and not (
                isinstance(value, str) and value.startswith("#")
            ):
                raise SchemaError(
                    f"{key} {value!r} refers to another document; only local '#...' "
                    "references are allowed"
                )
            _walk(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            _walk(item, depth + 1)


def check_parameters_schema(schema: dict[str, Any]) -> None:
    """Refuse a schema that is invalid, not an object schema, too big, or refers elsewhere."""
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"the schema is larger than {MAX_SCHEMA_BYTES} bytes")
    _walk(schema, 0)
    if schema.get("type") != "object":
        raise SchemaError('the parameters schema must have "type": "object"')
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise SchemaError(f"not a valid Draft 2020-12 schema: {err.message}") from None


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Draft202012Validator:
    # Building a validator costs more than most validations; a tool's schema rarely changes.
    return Draft202012Validator(json.loads(schema_json), registry=_EMPTY_REGISTRY)


def argument_errors(schema_json: str, arguments: Any) -> list[str]:
    """Return readable validation errors ("at /path: message"), empty when the arguments fit.

    `schema_json` is the schema as stored, the cache key of its compiled validator.
    """
    validator = _validator(schema_json)
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    shown = []
    for error in errors[:MAX_ERRORS_SHOWN]:
        pointer = "/" + "/".join(str(p) for p in error.absolute_path)
        shown.append(f"at {pointer}: {error.message[:200]}")
    return shown
