"""Run the gateway: `python -m services.gateway`."""

from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings
from services.rpc.logging import configure_logging
from services.rpc.server import run_main


def main() -> None:
    """Load settings from the environment and serve until SIGTERM."""
    settings = GatewaySettings.from_env()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    run_main(lambda: Gateway(settings), "gateway")


if __name__ == "__main__":
    main()
