"""What the control plane's servicers share within one process."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.control_plane.events import ClaimWaiters, EventBus, Notifier
from services.control_plane.settings import ControlPlaneSettings
from services.rpc.settings import HostedModelSettings


@dataclass(frozen=True)
class Runtime:
    """The pool, the event fan-out, dispatch waiters and settings of one control plane."""

    settings: ControlPlaneSettings
    model: HostedModelSettings
    pool: asyncpg.Pool
    bus: EventBus
    notifier: Notifier
    claim_waiters: ClaimWaiters
