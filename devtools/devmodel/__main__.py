"""Serve the dev model until SIGINT or SIGTERM: ``python -m devtools.devmodel``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from devtools.devmodel.server import DevModel

logger = logging.getLogger("devtools.devmodel")

# Read from the environment, not the command line, where any local user could see it.
API_KEY_VARIABLE = "AP_DEVMODEL_API_KEY"


async def _serve(host: str, port: int, models: list[str] | None, api_key: str | None) -> None:
    """Run the dev model until SIGINT or SIGTERM."""
    model = DevModel(host, port, models=models, api_key=api_key)
    base_url = await model.start()
    logger.info("deterministic dev model (not a real LLM) serving %s", base_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await model.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the dev model."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.devmodel",
        description=(
            "Serve the deterministic dev model (not a real LLM) over OpenAI Chat Completions,"
            f" OpenAI Responses and Anthropic Messages. With {API_KEY_VARIABLE} set, requests"
            " must present that API key."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="ID",
        help="serve only this model id (repeatable); by default any model name is served",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    api_key = os.environ.get(API_KEY_VARIABLE) or None
    asyncio.run(_serve(args.host, args.port, args.models, api_key))


if __name__ == "__main__":
    main()
