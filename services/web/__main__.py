"""Run the HTTP edge: `python -m services.web`."""

from services.rpc.logging import configure_logging
from services.rpc.server import run_main
from services.web.app import Edge
from services.web.settings import WebSettings


def main() -> None:
    """Load settings from the environment and serve until SIGTERM."""
    settings = WebSettings.from_env()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    run_main(lambda: Edge(settings), "web")


if __name__ == "__main__":
    main()
