"""docs/operations.md lists every setting with its default and every metric with its type.

The page is written by hand, for the meanings; these tests make a new, renamed or re-defaulted
setting or metric fail until the page says so.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY
from pydantic_settings import BaseSettings

from services.__main__ import COMMANDS
from services.migrate import SCHEMAS

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
# Where variables outside the services' settings are read (make run, tests, the CLI, the SDK).
OTHER_READERS = [
    REPO / "devtools",
    REPO / "ap_cli",
    REPO / "sdk" / "python" / "src" / "agentplatform" / "_config.py",
    REPO / "tests" / "conftest.py",
]
# Every service's metrics module, as each service process imports its own.
METRICS_MODULES = [
    f"services.{name}.metrics" for name in ("control_plane", "worker", "vault", "web")
]


def settings_classes() -> Iterator[type[BaseSettings]]:
    """Yield the settings classes the services load: those without subclasses."""
    for module in COMMANDS.values():
        importlib.import_module(module)
    pending = list(BaseSettings.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls.__module__.startswith("services.") and not cls.__subclasses__():
            yield cls


def settings_defaults() -> dict[str, set[str]]:
    """Return each AP_* variable with its defaults as the page writes them ("" if none)."""
    defaults: dict[str, set[str]] = {}
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            default = field.default
            if default is None or field.default_factory is not None:
                shown = ""
            elif isinstance(default, float):
                shown = f"{default:g}"
            else:
                shown = str(default)
            alias = field.validation_alias
            variable = alias if isinstance(alias, str) else prefix + name
            defaults.setdefault(variable.upper(), set()).add(shown)
    return defaults


def documented_rows() -> dict[str, str]:
    """Return each variable or metric named in a table row's first cell, with the row."""
    rows: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            for name in re.findall(r"`([^`]+)`", first):
                rows[name] = line
    return rows


def test_every_setting_is_documented_with_its_default() -> None:
    """Each settings field has a row, and the row shows its default."""
    rows = documented_rows()
    for variable, defaults in settings_defaults().items():
        assert variable in rows, f"docs/operations.md does not document {variable}"
        for default in defaults - {""}:
            cells = rows[variable].split("|")[2:]
            assert any(default in cell for cell in cells), f"{variable}: default {default}"


def test_every_documented_variable_exists() -> None:
    """No row names a variable that nothing reads any more."""
    known = set(settings_defaults())
    known |= {"AP_DATABASE_URL"} | {f"AP_DB_PASSWORD_{s.schema.upper()}" for s in SCHEMAS}
    sources = [
        path.read_text()
        for reader in OTHER_READERS
        for path in ([reader] if reader.is_file() else reader.rglob("*.py"))
    ]
    for name in documented_rows():
        if name.startswith("AP_") and name not in known:
            assert any(f'"{name}"' in source for source in sources), f"nothing reads {name}"


def metric_families() -> dict[str, str]:
    """Return the platform's metrics as a scrape names them, with their types."""
    for module in METRICS_MODULES:
        importlib.import_module(module)
    importlib.import_module("services.rpc.metrics")
    families: dict[str, str] = {}
    for family in REGISTRY.collect():
        if family.name.startswith("ap_"):
            suffix = "_total" if family.type == "counter" else ""
            families[family.name + suffix] = family.type
    return families


def test_every_metric_is_documented_with_its_type() -> None:
    """Each ap_* metric has a row in the metrics table naming its type; none is stale."""
    rows = documented_rows()
    families = metric_families()
    for name, kind in families.items():
        assert name in rows, f"docs/operations.md does not describe {name}"
        assert rows[name].split("|")[2].strip() == kind, f"{name} is a {kind}"
    documented = {name for name in rows if name.startswith("ap_")}
    assert documented <= set(families), f"no such metric: {documented - set(families)}"
