"""Command-line entry points: `canaryproxy run`, `canaryproxy check-config`, ...

Exit status: 0 success, 1 runtime failure, 2 bad usage or bad configuration (never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from importlib import resources
from typing import Sequence

from canaryproxy import __version__
from canaryproxy.config import Config, load, parse
from canaryproxy.errors import CanaryProxyError, ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _load_config(path: str | None) -> Config:
    if path:
        return load(path, os.environ)
    text = resources.files("canaryproxy").joinpath("default.yaml").read_text(encoding="utf-8")
    return parse(text, os.environ, "<embedded default config>")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    _setup_logging(config.log_level)

    import uvloop

    from canaryproxy.server import CanaryProxy

    async def main() -> None:
        proxy = CanaryProxy(config)
        await proxy.start()
        await proxy.run_until_signalled()

    uvloop.run(main())
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load(args.file, os.environ)
    print(
        f"{args.file}: ok (listen {config.listen[0]}:{config.listen[1]}, "
        f"stable {config.upstreams.stable}, canary {config.upstreams.canary}, "
        f"weight {config.routing.weight:g}%)"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canaryproxy",
        description="Release a new model version as a canary; roll it back by itself when it is worse.",
    )
    parser.add_argument("--version", action="version", version=f"canaryproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", help="YAML config file (default: the embedded example)")
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    check.set_defaults(handler=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"canaryproxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CanaryProxyError as exc:
        print(f"canaryproxy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
