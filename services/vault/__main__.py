"""Run the vault: `python -m services.vault`."""

from services.rpc.logging import configure_logging
from services.rpc.server import run_main
from services.vault.app import Vault
from services.vault.settings import VaultSettings


def main() -> None:
    """Load settings from the environment and serve until SIGTERM."""
    settings = VaultSettings.from_env()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    run_main(lambda: Vault(settings), "vault")


if __name__ == "__main__":
    main()
