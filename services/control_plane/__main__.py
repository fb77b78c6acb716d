"""Run the control plane: `python -m services.control_plane`."""

from services.control_plane.app import ControlPlane
from services.control_plane.settings import ControlPlaneSettings
from services.rpc.logging import configure_logging
from services.rpc.server import run_main
from services.rpc.settings import HostedModelSettings


def main() -> None:
    """Load settings from the environment and serve until SIGTERM."""
    settings = ControlPlaneSettings.from_env()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    run_main(lambda: ControlPlane(settings, HostedModelSettings()), "control_plane")


if __name__ == "__main__":
    main()
