"""What the control plane's servicers share within one process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from agentplatform.v1 import run_pb2

from services.control_plane import metrics, store
from services.control_plane.events import ClaimWaiters, EventBus, Notifier, place
from services.control_plane.revocation import Revocations
from services.control_plane.settings import ControlPlaneSettings
from services.rpc.hosted_models import HostedModelSettings


@dataclass(frozen=True)
class Runtime:
    """The pool, the event fan-out, open streams' principals, dispatch waiters and settings."""

    settings: ControlPlaneSettings
    model: HostedModelSettings
    pool: asyncpg.Pool
    bus: EventBus
    notifier: Notifier
    claim_waiters: ClaimWaiters
    revocations: Revocations

    def announce(self, stored: store.Record, events: Sequence[run_pb2.RunEvent]) -> None:
        """Publish the events one statement just stored, exactly as a replay will show them.

        Call it after the commit. `stored` is the statement's row (store.run_event_append and
        its siblings): the run's id, session, state, attempt and create_time, and where the
        events landed, the last of them at last_event_sequence / session_sequence, all stored
        at event_time. Local subscribers get the events at once; peers hear of them through
        the Notifier's coalesced NOTIFY.
        """
        run_id, session_id = stored["id"], stored["session_id"]
        last, last_in_session = stored["last_event_sequence"], stored["session_sequence"]
        for offset, event in enumerate(events, start=1 - len(events)):
            place(
                event,
                session_id=session_id,
                run_id=run_id,
                sequence=last + offset,
                session_sequence=last_in_session + offset,
                attempt=stored["attempt"],
                create_time=stored["event_time"],
            )
        metrics.record_events_stored(events, stored["state"], stored["create_time"])
        self.bus.publish(run_id, session_id, list(events))
        self.notifier.run_events(run_id, last, session_id, last_in_session)
