"""The dashboard knows every event type the SDK's vocabulary names (one source per fact).

A type missing from static/js/events.js still renders (generically); this says when a new
event needs its line there.
"""

from __future__ import annotations

import re

from agentplatform.events import KINDS

from services.web.settings import STATIC_DIR


def test_every_event_type_has_a_timeline_line() -> None:
    """Each EventKind's dotted type is a key of events.js's KINDS."""
    source = (STATIC_DIR / "js" / "events.js").read_text()
    block = source[source.index("export const KINDS = {") : source.index("\n};")]
    known = set(re.findall(r'^  "?([a-z_.]+)"?: \{', block, re.MULTILINE))
    expected = {kind.type for kind in KINDS.values()}
    assert expected - known == set(), f"events.js has no KINDS entry for {expected - known}"
    assert known - expected == set(), f"events.js names types the SDK does not: {known - expected}"
