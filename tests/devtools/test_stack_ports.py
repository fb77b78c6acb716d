"""Every port of a `make run` stack follows from its base port, inside its own block."""

from __future__ import annotations

import pytest

from devtools.stack.console import StackError
from devtools.stack.layout import PORTS_PER_STACK, SERVICE_SLOTS, StackPorts
from devtools.stack.settings import SERVICES, StackSettings


def used_ports(ports: StackPorts) -> list[int]:
    """Return every port a stack binds or keeps: services, metrics, dev model, Postgres."""
    slots = range(SERVICE_SLOTS)
    return [
        *(ports.service(slot) for slot in slots),
        *(ports.metrics(slot) for slot in slots),
        ports.devmodel,
        ports.postgres,
    ]


def test_a_stack_uses_each_port_of_its_block_once() -> None:
    """Services, their metrics, the dev model and Postgres fill the block without overlap."""
    ports = StackPorts(50051)
    used = used_ports(ports)
    assert sorted(used) == list(ports.all())
    assert len(ports.all()) == PORTS_PER_STACK
    assert {ports.service(spec.slot) for spec in SERVICES} <= set(ports.all())
    assert len({spec.slot for spec in SERVICES}) == len(SERVICES)


@pytest.mark.parametrize("distance", [PORTS_PER_STACK, PORTS_PER_STACK + 1, 1000])
def test_stacks_a_block_apart_share_no_port(distance: int) -> None:
    """A second stack whose base is a block (or more) higher collides with nothing."""
    first, second = StackPorts(50051), StackPorts(50051 + distance)
    assert not set(used_ports(first)) & set(used_ports(second))


def test_the_base_port_moves_every_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """AP_STACK_BASE_PORT decides the dev model's and the embedded Postgres's ports too."""
    monkeypatch.setenv("AP_STACK_BASE_PORT", "40000")
    ports = StackSettings.from_env().ports
    assert (ports.base, ports.devmodel, ports.postgres) == (40000, 40010, 40011)
    assert ports.metrics(0) == 40005


@pytest.mark.parametrize("base", ["0", str(65537 - PORTS_PER_STACK), "fifty"])
def test_a_base_port_without_room_for_the_block_is_refused(
    monkeypatch: pytest.MonkeyPatch, base: str
) -> None:
    """A base port that leaves no room for the whole block fails with the variable's name."""
    monkeypatch.setenv("AP_STACK_BASE_PORT", base)
    with pytest.raises(StackError, match="AP_STACK_BASE_PORT"):
        StackSettings.from_env()
