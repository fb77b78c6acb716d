"""Run a worker: `python -m services.worker`."""

from services.rpc.hosted_models import HostedModelSettings
from services.rpc.logging import configure_logging
from services.rpc.server import run_main
from services.worker.app import Worker
from services.worker.settings import WorkerSettings


def main() -> None:
    """Load settings from the environment and work until SIGTERM."""
    settings = WorkerSettings.from_env()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    model = HostedModelSettings.from_env()
    run_main(lambda: Worker(settings, model), "worker")


if __name__ == "__main__":
    main()
