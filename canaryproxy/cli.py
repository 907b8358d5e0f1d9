"""Command-line entry points: `canaryproxy run`, `canaryproxy check-config`, ...

Exit status: 0 success, 1 runtime failure, 2 bad usage or bad configuration (never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from importlib import resources
from typing import Callable, Sequence, TypeAlias

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
    # The pid, thread and process names on every record cost a system call each; nobody reads them.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from canaryproxy import workers

    config = _load_config(args.config)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    refusal = workers.refusal(config, args.workers)
    if refusal is not None:
        raise ConfigError(refusal)
    _make_state_directories(config)
    _setup_logging(config.log_level)
    if args.workers > 1:
        return workers.supervise(args.config, args.workers)
    reuse_port = args.worker is not None
    if reuse_port:
        config = workers.worker_config(config, args.worker)

    import uvloop

    from canaryproxy.server import CanaryProxy

    async def main() -> None:
        proxy = CanaryProxy(config, reuse_port=reuse_port)
        await proxy.start()
        # Everything built so far (modules, config, pools, windows' preallocated rings) lives as
        # long as the process: move it out of the cyclic GC's sight. A full collection then scans
        # only what requests allocate, and its pauses, which stall every stream at once, drop
        # from 35-40 ms to under 10 ms at 6,500 req/s (bench/README.md, "Garbage collection").
        gc.freeze()
        watch = asyncio.create_task(workers.exit_with_parent(os.getppid())) if reuse_port else None
        await proxy.run_until_signalled()
        if watch is not None:
            watch.cancel()

    uvloop.run(main())
    return EXIT_OK


def _make_state_directories(config: Config) -> None:
    """Create the directories of the state file and the audit log, which check-config found
    creatable (loading a config only reads)."""
    for field, path in (("state.path", config.state.path), ("state.audit_log", config.state.audit_log)):
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{field}: cannot create {path.parent}: {exc.strerror or exc}") from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load(args.file, os.environ)
    print(
        f"{args.file}: ok (listen {config.listen[0]}:{config.listen[1]}, "
        f"stable {config.upstreams.stable}, canary {config.upstreams.canary}, "
        f"weight {config.routing.weight:g}%)"
    )
    return EXIT_OK


def cmd_simulate_upstream(args: argparse.Namespace) -> int:
    import uvloop

    from canaryproxy.sim.simulator import Behaviour, ModelSimulator, serve

    behaviour = Behaviour().updated({
        "latency": args.latency, "ttft": args.ttft, "tokens_mean": args.tokens_mean,
        "error_rate": args.error_rate, "guardrail_rate": args.guardrail_rate,
        "schema_break_rate": args.schema_break_rate, "truncate_rate": args.truncate_rate,
        "model": args.model,
    })
    uvloop.run(serve(ModelSimulator(behaviour, seed=args.seed), args.host, args.port))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    import signal

    import uvloop

    from canaryproxy.core.units import parse_duration
    from canaryproxy.sim.demo import run_demo

    try:
        hold = parse_duration(args.hold)
    except ValueError as exc:
        raise ConfigError(f"--hold: {exc}") from None
    # A live view needs a terminal; redirected output (logs, CI) gets a line per second.
    plain = args.plain or not sys.stdout.isatty()
    color = not (args.no_color or plain or os.environ.get("NO_COLOR"))
    _setup_logging("warning" if plain else "error")  # log lines would tear the live view

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_demo(args.scenario, rate=args.rate, hold=hold, plain=plain, color=color,
                       keep_running=args.keep_running, stop=stop)

    uvloop.run(main())
    return EXIT_OK


# --- talking to a running proxy's admin API -------------------------------------------------------

DEFAULT_ADMIN = "http://127.0.0.1:9090"


class AdminUnreachable(CanaryProxyError):
    pass


def _admin_call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    url = args.admin.rstrip("/") + path
    headers = {"Accept": "application/json"}
    token = os.environ.get("CANARYPROXY_ADMIN_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        body = {"actor": os.environ.get("USER") or os.environ.get("USERNAME") or "cli", **body}
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": {"message": exc.reason}}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminUnreachable(f"cannot reach the admin API at {url}: {reason} "
                               "(set --admin or CANARYPROXY_ADMIN_URL)") from None


def _fail(status: int, payload: dict) -> int:
    message = payload.get("error", {}).get("message", f"HTTP {status}")
    print(f"canaryproxy: {message}", file=sys.stderr)
    return EXIT_USAGE if status in (400, 401, 403, 409, 421) else EXIT_FAILURE


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from canaryproxy.sim.status_view import render_status

    status, payload = _admin_call(args, "GET", f"/admin/status?window={args.window}")
    if status != 200:
        return _fail(status, payload)
    print(json.dumps(payload, indent=2) if args.json else render_status(payload))
    return EXIT_OK


def _mutation(name: str, body_of: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from canaryproxy.sim.status_view import render_status

        status, payload = _admin_call(args, "POST", f"/admin/{name}", body_of(args))
        if status != 200:
            return _fail(status, payload)
        print(render_status(payload))
        return EXIT_OK

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canaryproxy",
        description="Release a new model version as a canary; roll it back by itself when it is worse.",
    )
    parser.add_argument("--version", action="version", version=f"canaryproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_and_check_config(commands)
    _add_simulate_upstream(commands)
    _add_demo(commands)
    _add_admin_commands(commands)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_run_and_check_config(commands: Commands) -> None:
    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", help="YAML config file (default: the embedded example)")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="N processes on one port (SO_REUSEPORT), one rollout; N > 1 needs "
                          "coordination.backend: redis")
    run.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    check.set_defaults(handler=cmd_check_config)


def _add_simulate_upstream(commands: Commands) -> None:
    from canaryproxy.core.units import format_duration
    from canaryproxy.sim.simulator import Behaviour

    sim_defaults = Behaviour()
    simulate = commands.add_parser(
        "simulate-upstream", help="run a simulated OpenAI-compatible model server (for trying canaryproxy)")
    simulate.add_argument("--port", type=int, required=True)
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--latency", default=format_duration(sim_defaults.latency),
                          help="mean time to the last token (default %(default)s)")
    simulate.add_argument("--ttft", default=format_duration(sim_defaults.ttft),
                          help="mean time to the first token of a stream (default %(default)s)")
    simulate.add_argument("--tokens-mean", type=float, default=sim_defaults.tokens_mean,
                          help="mean completion tokens of a text answer (default %(default)g)")
    for name, what in (("error-rate", "answers that are a 500"),
                       ("guardrail-rate", "answers cut short by a guardrail (finish_reason content_filter)"),
                       ("schema-break-rate", "structured outputs that are invalid JSON or miss a required field"),
                       ("truncate-rate", "connections aborted halfway through the body")):
        simulate.add_argument(f"--{name}", type=float, default=getattr(sim_defaults, name.replace("-", "_")),
                              help=f"share of {what} (default %(default)g)")
    simulate.add_argument("--model", default=sim_defaults.model, help="model name (default %(default)s)")
    simulate.add_argument("--seed", type=int, help="seed of the random choices, for a repeatable run")
    simulate.set_defaults(handler=cmd_simulate_upstream)


def _add_demo(commands: Commands) -> None:
    from canaryproxy.sim.demo import SCENARIOS

    demo = commands.add_parser(
        "demo", help="watch a whole rollout on this machine: simulated models, traffic, rollback",
        description="Starts two simulated model servers (stable and canary), the proxy with a staged "
                    "rollout (5%, 25%, 50%; the shadow scenarios begin with a shadow stage), rules and the judge, and traffic of a few thousand users, all on 127.0.0.1. "
                    "Scenarios: " + "; ".join(f"{s.name}: {s.story}" for s in SCENARIOS.values()) + ".")
    demo.add_argument("--scenario", choices=list(SCENARIOS), default="healthy")
    demo.add_argument("--rate", type=float, default=200.0, help="requests per second (default %(default)g)")
    demo.add_argument("--hold", default="15s", help="how long each stage lasts at least (default %(default)s)")
    demo.add_argument("--no-color", action="store_true", help="no colours in the live view")
    demo.add_argument("--plain", action="store_true",
                      help="a line per second instead of the live view (the default when not on a terminal)")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the proxy and traffic going after the outcome, until Ctrl-C")
    demo.set_defaults(handler=cmd_demo)


def _admin_command(commands: Commands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command that talks to a running proxy's admin API."""
    sub = commands.add_parser(name, help=help_text)
    sub.add_argument("--admin", default=os.environ.get("CANARYPROXY_ADMIN_URL", DEFAULT_ADMIN),
                     help=f"admin API base URL (default: $CANARYPROXY_ADMIN_URL or {DEFAULT_ADMIN}); "
                          "the token comes from $CANARYPROXY_ADMIN_TOKEN")
    sub.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    return sub


def _add_admin_commands(commands: Commands) -> None:
    status = _admin_command(commands, "status",
                            "show the rollout: phase, stage, weight, per-version metrics, rules")
    status.add_argument("--json", action="store_true", help="print the raw status document")
    status.add_argument("--window", default="1m", help="span of the per-version metrics (default 1m)")
    status.set_defaults(handler=cmd_status)

    for name, help_text in (("start", "start the rollout at its first stage"),
                            ("pause", "pause the rollout; the weight stays"),
                            ("resume", "resume at the current stage")):
        sub = _admin_command(commands, name, help_text)
        sub.add_argument("--reason", default="")
        sub.set_defaults(handler=_mutation(name, lambda a: {"reason": a.reason}))

    promote = _admin_command(commands, "promote", "advance one stage (or --to-end: straight to 100%%)")
    promote.add_argument("--to-end", action="store_true")
    promote.add_argument("--reason", default="")
    promote.set_defaults(handler=_mutation("promote", lambda a: {"reason": a.reason, "to_end": a.to_end}))

    rollback = _admin_command(commands, "rollback", "roll back: canary weight 0")
    rollback.add_argument("--reason", default="", help="why (recorded in the decision and audit logs)")
    rollback.set_defaults(handler=_mutation("rollback", lambda a: {"reason": a.reason}))

    weight = _admin_command(commands, "set-weight", "set the canary weight by hand (pauses the automatic side)")
    weight.add_argument("weight", type=float, help="percent, 0-100")
    weight.add_argument("--reason", default="")
    weight.set_defaults(handler=_mutation("weight", lambda a: {"weight": a.weight, "reason": a.reason}))


def _config_error_text(error: ConfigError) -> str:
    """One line for one problem (`file: invalid configuration: field: what`); a list for several."""
    if len(error.problems) == 1:
        return f"{error.args[0]}: {error.problems[0]}"
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"canaryproxy: {_config_error_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except CanaryProxyError as exc:
        print(f"canaryproxy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
