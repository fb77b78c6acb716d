"""Run one part of the platform by name: `python -m services COMMAND [ARGS]` (or `ap-service`).

The container image's entry point, so one image serves every role:

    control_plane | worker | vault | gateway | web   serve until SIGTERM
    migrate                                          apply every schema's migrations, then exit
    bootstrap [--api-key-env NAME] [...]             create the first workspace and owner, then exit
    healthcheck HOST:PORT                            exit 0 when that server reports SERVING
    doctor                                           check each configured model answers
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# Each command's module has a `main()`; importing only the chosen one keeps start-up light.
COMMANDS = {
    "control_plane": "services.control_plane.__main__",
    "worker": "services.worker.__main__",
    "vault": "services.vault.__main__",
    "gateway": "services.gateway.__main__",
    "web": "services.web.__main__",
    "migrate": "services.migrate",
    "bootstrap": "services.control_plane.bootstrap",
    "healthcheck": "services.rpc.healthcheck",
    "doctor": "services.worker.doctor",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command named by the first argument, passing it the rest."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: ap-service {{{'|'.join(COMMANDS)}}} [ARGS]", file=sys.stderr)
        raise SystemExit(2)
    command, rest = args[0], args[1:]
    sys.argv = [f"ap-service {command}", *rest]
    importlib.import_module(COMMANDS[command]).main()


if __name__ == "__main__":
    main()
