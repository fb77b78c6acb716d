"""AP_CONTROL_PLANE_ADDRESS: one replica or several, and a clear error for a malformed list."""

from __future__ import annotations

import pytest

from services.rpc.settings import SettingsError
from services.worker.settings import WorkerSettings


def test_several_addresses_are_tried_in_the_order_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commas separate the entries; spaces around them do not matter."""
    monkeypatch.setenv("AP_CONTROL_PLANE_ADDRESS", "cp-a:50051, cp-b:50051 ,10.0.0.3:50051")
    settings = WorkerSettings.from_env()
    assert settings.control_plane_addresses == ["cp-a:50051", "cp-b:50051", "10.0.0.3:50051"]


@pytest.mark.parametrize("value", ["", "cp-a:50051,,cp-b:50051", "cp-a:50051,"])
def test_an_empty_entry_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """The worker exits at start-up and says which variable is wrong."""
    monkeypatch.setenv("AP_CONTROL_PLANE_ADDRESS", value)
    with pytest.raises(SettingsError):
        WorkerSettings.from_env()
    assert "AP_CONTROL_PLANE_ADDRESS" in capsys.readouterr().err
