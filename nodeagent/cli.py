"""
Command line: ``nodeagent run | once | doctor | config check FILE | version``.

Exit codes: 0 success; 1 ``doctor`` found a failing collector; 2 invalid start-up configuration
(including a listen address that cannot be bound), with a message naming the key.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import platform
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import version as dist_version
from typing import Any

import structlog

from nodeagent import __version__, httpserver, logs
from nodeagent.agent import Agent, build_app
from nodeagent.collectors import COLLECTORS
from nodeagent.config import AgentConfig, ConfigError, build_config, dump, parse_set_option, redact_url_credentials
from nodeagent.doctor import run_doctor
from nodeagent.ship.shipper import Shipper, build_shipper
from nodeagent.webconfig import WebSecurity, load_web_config

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML configuration file (also NODEAGENT_CONFIG)")
    common.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (key: listen)")
    common.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web-config file (key: web.config_file)",
    )
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="key: log.level")
    common.add_argument("--log-format", choices=["json", "console"], help="key: log.format")
    for root in ("procfs", "sysfs", "rootfs", "cgroupfs"):
        common.add_argument(f"--path.{root}", dest=f"path_{root}", metavar="DIR", help=f"key: paths.{root}")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any key, e.g. collectors.cpu.interval=5s",
    )
    for name in COLLECTORS:
        group = common.add_mutually_exclusive_group()
        group.add_argument(
            f"--collector.{name}",
            dest=f"collector_{name}",
            action="store_const",
            const=True,
            help=argparse.SUPPRESS,
        )
        group.add_argument(
            f"--no-collector.{name}",
            dest=f"collector_{name}",
            action="store_const",
            const=False,
            help=argparse.SUPPRESS,
        )

    parser = argparse.ArgumentParser(
        prog="nodeagent",
        description="Node-level observability agent. Collector switches: --collector.NAME / --no-collector.NAME "
        f"for NAME in {', '.join(COLLECTORS)}.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    # A fixed usage line: argparse (3.11) asserts when it wraps a long one with mutually exclusive groups, as the
    # one generated from every --collector.NAME switch is.
    def usage(command: str) -> str:
        return f"nodeagent {command} [options] (--help lists them)"

    sub.add_parser("run", parents=[common], usage=usage("run"), help="run the daemon and serve /metrics")
    once = sub.add_parser(
        "once", parents=[common], usage=usage("once"), help="one cycle of every enabled collector to stdout"
    )
    once.add_argument("--format", choices=["text", "openmetrics"], default="text")
    sub.add_parser(
        "doctor",
        parents=[common],
        usage=usage("doctor"),
        help="check each collector on this host and explain what fails",
    )
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", parents=[common], usage=usage("config check") + " FILE", help="validate a configuration file"
    )
    check.add_argument("file", metavar="FILE")
    sub.add_parser("version", help="print the version")
    return parser


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for option in args.set:
        key, value = parse_set_option(option)
        flags[key] = value
    if args.listen is not None:
        flags["listen"] = args.listen
    if args.web_config_file is not None:
        flags["web.config_file"] = args.web_config_file
    if args.log_level is not None:
        flags["log.level"] = args.log_level
    if args.log_format is not None:
        flags["log.format"] = args.log_format
    for root in ("procfs", "sysfs", "rootfs", "cgroupfs"):
        value = getattr(args, f"path_{root}")
        if value is not None:
            flags[f"paths.{root}"] = value
    for name in COLLECTORS:
        value = getattr(args, f"collector_{name}")
        if value is not None:
            flags[f"collectors.{name}.enabled"] = value
    return flags


def _split_host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def _reload(
    agent: Agent,
    security: WebSecurity | None,
    read_config: Callable[[], AgentConfig],
    apply_logs: Callable[[AgentConfig], None],
) -> None:
    """SIGHUP: re-read the configuration and apply it; an invalid one is logged and the running one kept."""
    log = structlog.get_logger()
    log.info("config.reload_requested")
    if security is not None:
        security.reload_if_changed()
    try:
        cfg = read_config()
    except ConfigError as exc:
        agent.reload_failed()
        log.error("config.reload_failed", error={"message": str(exc)})
        return
    running = agent.cfg
    # First the log level and format: the new collectors bind their loggers when they are built.
    apply_logs(cfg)
    try:
        restart = await agent.reload(cfg)
    except Exception as exc:  # noqa: BLE001 - a failed reload must leave the agent serving
        apply_logs(running)
        agent.reload_failed()
        log.error("config.reload_failed", error={"message": f"{type(exc).__name__}: {exc}"})
        return
    if restart:
        log.warning("config.reload_needs_restart", keys=restart)
    log.info("config.reloaded", collectors=agent.names)


async def _serve(
    cfg: AgentConfig,
    shipper: Shipper | None = None,
    security: WebSecurity | None = None,
    read_config: Callable[[], AgentConfig] | None = None,
    apply_logs: Callable[[AgentConfig], None] = lambda _: None,
) -> int:
    log = structlog.get_logger()
    agent = Agent(cfg, shipper=shipper)
    middlewares = [security.middleware] if security is not None else []
    ssl_context = security.ssl_context if security is not None else None
    if security is not None and security.config.ignored:
        log.warning("web.config_keys_ignored", keys=list(security.config.ignored), path=security.config.path)
    runner = httpserver.make_runner(build_app(agent, middlewares), cfg.web, shutdown_timeout=5.0)
    await runner.setup()
    host, port = _split_host_port(cfg.listen)
    site = httpserver.LimitedSite(runner, host or None, port, cfg.web, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        print(
            f"nodeagent: listen {cfg.listen}: cannot serve: {reason}; choose another address with --listen "
            "or the key 'listen'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    if read_config is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: spawn(_reload(agent, security, read_config, apply_logs)))
    if security is not None:
        spawn(security.watch())
    for problem in agent.missing_roots():
        log.error("agent.root_missing", error={"message": problem})
    log.info(
        "agent.started", listen=cfg.listen, tls=ssl_context is not None, collectors=agent.names, version=__version__
    )
    await stop.wait()
    log.info("agent.stopping")
    loop.remove_signal_handler(signal.SIGHUP)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await runner.cleanup()
    log.info("agent.stopped")
    return 0


async def _once(cfg: AgentConfig, openmetrics: bool) -> bytes:
    agent = Agent(cfg)
    for problem in agent.missing_roots():
        print(f"nodeagent: warning: {problem}", file=sys.stderr)
    try:
        # Names for the cgroup metrics: list each runtime once (the daemon follows their event streams).
        await agent.metadata.sync_once()
        await agent.scheduler.run_all_once()
    finally:
        await agent.scheduler.stop()
        await agent.metadata.aclose()
    return agent.exposition.body(openmetrics, False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nodeagent`` command."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(
            f"nodeagent {__version__} (python {platform.python_version()}, "
            f"prometheus-client {dist_version('prometheus-client')}, aiohttp {dist_version('aiohttp')})"
        )
        return 0
    try:
        if args.command == "config":
            cfg = build_config(args.file, environ={}, flag_overrides=_flag_overrides(args))
        else:
            cfg = build_config(args.config, os.environ, _flag_overrides(args))
    except ConfigError as exc:
        print(f"nodeagent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # once and doctor keep stdout for their output; the daemon logs to stdout as containers expect.
    log_stream = sys.stdout if args.command == "run" else sys.stderr
    shipper = None
    security = None
    if args.command in ("run", "config") and (cfg.web.config_file or cfg.web.bearer_token_file):
        try:
            web_config = load_web_config(cfg.web.config_file) if cfg.web.config_file else None
            security = WebSecurity(web_config, cfg.web.bearer_token_file)
        except ConfigError as exc:
            print(f"nodeagent: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if args.command == "run":
        try:
            shipper = build_shipper(cfg.logs.ship, structlog.get_logger())
        except (OSError, ssl.SSLError, ValueError) as exc:
            message = redact_url_credentials(str(exc))
            print(f"nodeagent: logs.ship: cannot start shipping: {message}", file=sys.stderr)
            return EXIT_CONFIG

    def apply_logs(applied: AgentConfig) -> None:
        logs.configure(
            applied.log.level if args.command == "run" else "warning",
            applied.log.format,
            log_stream,
            sink=shipper.submit if shipper is not None else None,
        )

    apply_logs(cfg)
    if args.command == "config":
        print(f"{args.file}: valid\n---")
        print(dump(cfg), end="")
        return 0
    if args.command == "once":
        sys.stdout.buffer.write(asyncio.run(_once(cfg, args.format == "openmetrics")))
        sys.stdout.flush()
        return 0
    if args.command == "doctor":
        return asyncio.run(run_doctor(cfg, sys.stdout))

    def read_config() -> AgentConfig:
        return build_config(args.config, os.environ, _flag_overrides(args))

    return asyncio.run(_serve(cfg, shipper, security, read_config, apply_logs))
