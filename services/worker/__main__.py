"""Run a worker: `python -m services.worker`."""

from services.rpc.logging import configure_logging
from services.rpc.server import run_main
from services.rpc.settings import HostedModelSettings
from services.worker.app import Worker
from services.worker.settings import WorkerSettings


def main() -> None:
    """Load settings from the environment and work until SIGTERM."""
    settings = WorkerSettings.from_env()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    run_main(lambda: Worker(settings, HostedModelSettings()), "worker")


if __name__ == "__main__":
    main()
