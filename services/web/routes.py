"""The edge's routes, read from the `google.api.http` annotations of the public services.

Every RPC of every service in `agentplatform.v1` that carries an annotation becomes a route,
so an annotated RPC is served with no new code. Path templates follow `google/api/http.proto`:

    Template = "/" Segments [ ":" Verb ]
    Segment  = "*" | "**" | LITERAL | "{" FieldPath [ "=" Segments ] "}"
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import agentplatform.v1
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, message, message_factory

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=([^}]*))?\}")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class PathTemplate:
    """A compiled path template: match a URL path, or fill one in from field values."""

    template: str
    variables: tuple[str, ...]
    verb: str
    _regex: re.Pattern[str] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        """Compile a template such as "/v1/{name=sessions/*/runs/*}:cancel"."""
        if not template.startswith("/"):
            raise ValueError(f"path template {template!r} must start with '/'")
        path, verb = template, ""
        last = template.rsplit("/", 1)[-1]
        if ":" in last and "}" not in last.rsplit(":", 1)[1]:
            path, verb = template.rsplit(":", 1)
        variables: list[str] = []
        pattern = ""
        pos = 0
        for found in _VARIABLE.finditer(path):
            pattern += _segments_regex(path[pos : found.start()])
            variables.append(found.group(1))
            inner = _segments_regex(found.group(2) or "*")
            pattern += f"(?P<v{len(variables) - 1}>{inner})"
            pos = found.end()
        pattern += _segments_regex(path[pos:])
        if verb:
            pattern += re.escape(":" + verb)
        return cls(template, tuple(variables), verb, re.compile(f"^{pattern}$"))

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Return the variables of a raw (still percent-encoded) path, or None."""
        found = self._regex.match(raw_path)
        if found is None:
            return None
        return {
            name: urllib.parse.unquote(found.group(f"v{i}"))
            for i, name in enumerate(self.variables)
        }

    def expand(self, values: Mapping[str, str]) -> str:
        """Return the path with each variable replaced by its value (slashes kept)."""

        def fill(found: re.Match[str]) -> str:
            return urllib.parse.quote(values[found.group(1)], safe="/")

        return _VARIABLE.sub(fill, self.template)


def _segments_regex(text: str) -> str:
    out = []
    for part in re.split(r"(\*\*|\*)", text):
        if part == "**":
            out.append(r".+?")
        elif part == "*":
            out.append(r"[^/]+?")
        else:
            out.append(re.escape(part))
    return "".join(out)


@dataclass(frozen=True)
class Route:
    """One annotated RPC: its HTTP method, path template and body rule."""

    service: descriptor.ServiceDescriptor
    method: descriptor.MethodDescriptor
    http_method: str
    path: PathTemplate
    body: str

    @property
    def grpc_path(self) -> str:
        """Return the full gRPC method path, "/agentplatform.v1.RunService/GetRun"."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        """Say whether the RPC streams its answer (served as server-sent events)."""
        return bool(self.method.server_streaming)

    def request_class(self) -> type[message.Message]:
        """Return the generated request class."""
        return message_factory.GetMessageClass(self.method.input_type)

    def response_class(self) -> type[message.Message]:
        """Return the generated response class."""
        return message_factory.GetMessageClass(self.method.output_type)


def http_rule(method: descriptor.MethodDescriptor) -> http_pb2.HttpRule | None:
    """Return a method's google.api.http annotation, or None when it has none."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def public_services() -> Iterator[descriptor.ServiceDescriptor]:
    """Yield every service of the agentplatform.v1 package, from the generated modules."""
    for module_info in sorted(pkgutil.iter_modules(agentplatform.v1.__path__), key=str):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"agentplatform.v1.{module_info.name}")
            yield from module.DESCRIPTOR.services_by_name.values()


def routes_of(services: Iterator[descriptor.ServiceDescriptor]) -> list[Route]:
    """Return the routes of the annotated methods of `services` (additional_bindings too)."""
    found: list[Route] = []
    for service in services:
        for method in service.methods:
            rule = http_rule(method)
            if rule is None:
                continue
            for binding in (rule, *rule.additional_bindings):
                kind = binding.WhichOneof("pattern")
                if kind not in _HTTP_METHODS:
                    raise ValueError(f"{method.full_name}: unsupported HTTP pattern {kind!r}")
                found.append(
                    Route(
                        service,
                        method,
                        kind.upper(),
                        PathTemplate.parse(getattr(binding, kind)),
                        binding.body,
                    )
                )
    return found


class Router:
    """Find the route of an HTTP method and raw path."""

    def __init__(self, routes: list[Route]) -> None:
        # Custom methods (":verb") first: "/runs/{run}:cancel" must not read as a run id.
        self.routes = sorted(routes, key=lambda r: (not r.path.verb, r.path.template))

    def match(self, http_method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        """Return the route and its path variables, or None when no route has this path."""
        for route in self.routes:
            if route.http_method == http_method:
                values = route.path.match(raw_path)
                if values is not None:
                    return route, values
        return None

    def allowed_methods(self, raw_path: str) -> list[str]:
        """Return the HTTP methods some route serves at this path."""
        return sorted({r.http_method for r in self.routes if r.path.match(raw_path) is not None})
