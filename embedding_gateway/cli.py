"""``embedding-gateway serve | check-config | models | pull | prefetch``: arguments, logging,
the server, signals and sd_notify. The operator commands live in ``commands/``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import signal
import sys
from collections.abc import Sequence
from typing import IO

import attrs
import orjson
import structlog
from aiohttp import web

from .app import create_app
from .commands import models, prefetch, pull
from .config import GatewayConfig, load_config
from .config_search import CONFIG_VARIABLE, SEARCH_ORDER, find_config
from .connections import listen
from .errors import ConfigError
from .memory import pin_mmap_threshold
from .state import GATEWAY, Gateway, default_runtime
from .systemd import Notifier

log = structlog.get_logger("embedding_gateway")

PRELOAD_PING = 10.0  # seconds between EXTEND_TIMEOUT_USEC while waiting for preloads
CLOSE_TIMEOUT = 1.0  # for connections still open after the drain (it waited for requests)


class LogSink:
    """Where log lines go: one write each, and a line that cannot be written (a full disk, a
    file-size limit, a closed pipe) is dropped and counted, never raised. Logging must not be
    able to fail a request, end a background task or stop a shutdown; once lines can be
    written again, the first one says how many were lost."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.dropped = 0

    def msg(self, line: bytes | str) -> None:
        data = line.encode() if isinstance(line, str) else line
        if self.dropped:
            note = orjson.dumps({"event": "log_lines_dropped", "count": self.dropped,
                                 "level": "warning"})
            data = note + b"\n" + data
        try:
            self.stream.write(data + b"\n")
            self.stream.flush()
        except (OSError, ValueError):
            self.dropped += 1
        else:
            self.dropped = 0

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg


def configure_logging(level: str = "info", stream: IO[bytes] | None = None) -> None:
    """JSON lines off a TTY (journald, files), a readable console on a TTY; to stdout unless
    ``stream`` says otherwise.

    JSON lines are rendered by orjson straight to bytes and written to stdout's buffer in one
    write each: the request log line is on every request's path.
    """
    renderer: structlog.typing.Processor
    if sys.stdout.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
    sink = LogSink(stream or sys.stdout.buffer)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=True,
    )


def check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{path}: {len(exc.problems)} error(s)", file=sys.stderr)
        return 1
    count = sum(len(b.models) for b in config.backends.values())
    print(f"{path}: ok ({len(config.backends)} backends, {count} models)")
    return 0


def version() -> str:
    try:
        return importlib.metadata.version("embedding-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def with_address(config: GatewayConfig, host: str | None, port: int | None) -> GatewayConfig:
    """``serve --host/--port`` over the file's ``server.host`` / ``server.port``."""
    server = config.server
    server = attrs.evolve(server, host=server.host if host is None else host,
                          port=server.port if port is None else port)
    return attrs.evolve(config, server=server)


async def wait_for_preloads(gateway: Gateway, stop: asyncio.Event, notifier: Notifier) -> None:
    """Until the preload models are loaded, or a stop signal comes first."""
    preload = asyncio.create_task(gateway.wait_preloaded())
    stopped = asyncio.create_task(stop.wait())
    while not (preload.done() or stopped.done()):
        # systemd's start timeout (90 s by default) is shorter than a model download
        notifier.extend_timeout(2 * PRELOAD_PING, "loading the preload models")
        await asyncio.wait((preload, stopped), timeout=PRELOAD_PING,
                           return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    preload.cancel()


async def serve(path: str, config: GatewayConfig, host: str | None = None,
                port: int | None = None) -> int:
    notifier = Notifier()
    # Handlers go in before READY=1: systemd may signal as soon as it sees READY, and the
    # default actions of SIGTERM and SIGHUP end the process without draining or stopping
    # managed instances.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    app = create_app(config)
    gateway = app[GATEWAY]
    # handler_cancellation: a client that hangs up withdraws its request (its inputs leave
    # the batches not yet sent) instead of being served to nobody
    limits = config.server.limits
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=CLOSE_TIMEOUT, handler_cancellation=True,
                           keepalive_timeout=limits.keepalive_timeout)
    await runner.setup()
    try:
        await listen(runner, config.server.host, config.server.port, limits)
    except OSError as exc:
        log.error("listen_failed", host=config.server.host, port=config.server.port,
                  error=exc.strerror)
        await runner.cleanup()
        return 1
    if config.server.ready_after_preload:
        await wait_for_preloads(gateway, stop, notifier)
    log.info("listening", host=config.server.host, port=config.server.port)
    if not stop.is_set():
        notifier.ready(gateway.summary())

    reloading: asyncio.Task[None] | None = None

    async def reload_once() -> None:
        try:
            new_config = with_address(load_config(path), host, port)
        except ConfigError as exc:
            log.error("reload_rejected", problems=exc.problems)
            return
        try:
            await gateway.reload(new_config)
        except Exception:  # the old world keeps serving; the next SIGHUP tries again
            log.exception("reload_failed")
            return
        log.info("reloaded", backends=sorted(new_config.backends))

    async def reload_loop() -> None:
        nonlocal reloading
        while True:
            await reloads.get()
            notifier.reloading()
            # A reload is not cut short by a stop: retired backends must finish leaving.
            reloading = asyncio.create_task(reload_once())
            await asyncio.shield(reloading)
            notifier.ready(gateway.summary())

    async def status_loop() -> None:
        while True:
            await asyncio.sleep(5)
            notifier.status(gateway.summary())

    watchdog = asyncio.create_task(notifier.run_watchdog())  # kept alive while draining
    tasks = [asyncio.create_task(t) for t in (reload_loop(), status_loop())]
    await stop.wait()
    log.info("stopping", drain_timeout=config.server.shutdown_timeout)
    notifier.stopping("draining in-flight requests")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if reloading is not None and not reloading.done():
        await asyncio.wait({reloading}, timeout=config.server.shutdown_timeout)
        reloading.cancel()  # what it still held is closed with the gateway below
        await asyncio.gather(reloading, return_exceptions=True)
    # Still listening while draining: late requests get 503 + Retry-After rather than a
    # refused connection, and /health says so, until the last request in flight is done.
    left = await gateway.drain(config.server.shutdown_timeout)
    if left:
        log.warning("drain_timeout", requests_cut_off=left)
    await runner.cleanup()  # stops listening, closes connections, then on_cleanup
    watchdog.cancel()
    log.info("stopped")
    return 0


COMMANDS = {
    "serve": "run the gateway",
    "check-config": "validate a config file and list every error",
    "models": "list the configured models and their state (from the running gateway if one "
              "answers, else from the file)",
    "pull": "pull every model of every Ollama backend through Ollama's /api/pull",
    "prefetch": "start each managed model once, so its weights are downloaded, then stop it "
                "(while no gateway of this config runs)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedding-gateway",
        description="One OpenAI-compatible /v1/embeddings endpoint over Ollama, TEI and vLLM.",
        epilog=f"The config file: {SEARCH_ORDER}.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text,
                             epilog=f"The config file: {SEARCH_ORDER}.")
        cmd.add_argument("--config", "-c", default=None,
                         help=f"path to the YAML config (default: ${CONFIG_VARIABLE}, "
                              "/etc/embedding-gateway/config.yaml, ./config.yaml)")
        if name == "serve":
            cmd.add_argument("--host", default=None, help="listen here instead of server.host")
            cmd.add_argument("--port", type=port_number, default=None,
                             help="listen here instead of server.port")
            cmd.add_argument("--log-level", default="info",
                             choices=["debug", "info", "warning", "error"])
        if name == "models":
            cmd.add_argument("--url", default=None,
                             help="the gateway to ask (default: server.host and server.port)")
    return parser


def run_command(command: str, config: GatewayConfig, args: argparse.Namespace) -> int:
    """``models``, ``pull`` and ``prefetch``: the summary on stdout, the exit status back."""
    if command == "models":
        text, status = asyncio.run(models.list_models(config, args.url))
    elif command == "pull":
        text, status = pull.summary(asyncio.run(pull.pull_all(config)))
    else:
        url = models.gateway_url(config)
        if asyncio.run(models.answers(url)):
            print(f"a gateway answers at {url}: stop it first (prefetch would start instances "
                  "on its ports and container names)", file=sys.stderr)
            return 2
        # the summary says what failed and why; the supervisor's own lines would repeat it
        configure_logging("critical", sys.stderr.buffer)
        text, status = prefetch.summary(asyncio.run(prefetch.prefetch_all(config,
                                                                          default_runtime)))
    print(text)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = find_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc.problems[0]}", file=sys.stderr)
        return 1
    if args.command == "check-config":
        return check_config(path)
    if args.command != "serve":
        try:
            config = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1
        with contextlib.suppress(KeyboardInterrupt):
            return run_command(args.command, config, args)
        return 130
    configure_logging(args.log_level)
    pin_mmap_threshold()
    try:
        config = with_address(load_config(path), args.host, args.port)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config_error", problem=problem)
        return 1
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(path, config, args.host, args.port))
    return 130


if __name__ == "__main__":
    sys.exit(main())
