"""Run the control plane: `python -m services.control_plane`."""

from services.control_plane.app import ControlPlane
from services.control_plane.settings import ControlPlaneSettings
from services.rpc.hosted_models import HostedModelSettings
from services.rpc.logging import configure_logging
from services.rpc.server import run_main


def main() -> None:
    """Load settings from the environment and serve until SIGTERM."""
    settings = ControlPlaneSettings.from_env()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    model = HostedModelSettings.from_env()
    run_main(lambda: ControlPlane(settings, model), "control_plane")


if __name__ == "__main__":
    main()
