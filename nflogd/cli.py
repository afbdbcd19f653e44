"""Command line, with the flags of a Prometheus exporter (node_exporter, exporter-toolkit):

  nflogd [--config FILE] [--check-config [FILE]] [--web.listen-address ADDR ...]
         [--web.telemetry-path PATH] [--web.config.file FILE] [--web.systemd-socket]
         [--log.level LEVEL] [--log.format logfmt|json] [-h] [--version]

A flag overrides the config file's key (listen, metrics_path, web_config_file, log_level), also
after a reload: the file is re-read, the flags applied again.

Exit codes: 0 clean stop or valid config; 1 runtime failure (no group could be bound, cannot
listen); 2 usage or configuration error (bad arguments, bad config or web config file, no socket
from systemd with --web.systemd-socket).

This module is the program's entry (the `nflogd` console script and `python -m nflogd` both start
here), so importing it blocks SIGHUP in the calling thread before anything slow runs: a SIGHUP that
arrives while Python imports and the config loads stays pending, and the daemon takes it as a
reload once it runs (daemon.take_signals) instead of dying by SIGHUP's default action.
"""

from __future__ import annotations

# First, before the imports below (tens of milliseconds): only the interpreter's own start-up,
# which runs no code of ours, is left unprotected.
import signal

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

import argparse  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

from . import __version__, logformat  # noqa: E402
from .config import (  # noqa: E402
    BUILTIN_SOURCE, DEFAULT_CONFIG_PATH, Config, ConfigError, check_metrics_path, default_config,
    load_config, parse_listen)

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
# glibc mallopt() parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def _listen_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _telemetry_path(text: str) -> str:
    try:
        return check_metrics_path(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _DeprecatedLogLevel(argparse.Action):
    """--log-level: the old spelling of --log.level; still works, says so once on stderr."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print("nflogd: --log-level is deprecated, use --log.level", file=sys.stderr)
        setattr(namespace, "log_level", values)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nflogd", allow_abbrev=False,  # as kingpin: --web.listen-addres is a typo
        description="Count netfilter NFLOG records and serve them to Prometheus. "
        "Flags override the configuration file's keys.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.")
    p.add_argument("--config", metavar="FILE",
                   help=f"YAML configuration (default: {DEFAULT_CONFIG_PATH} if it exists, "
                        "else built-in defaults)")
    p.add_argument("--check-config", nargs="?", const=True, metavar="FILE",
                   help="validate the configuration (FILE, else --config or the default) and its "
                        "web config, then exit: 0 valid, 2 not")
    p.add_argument("--web.listen-address", dest="listen", action="append", metavar="ADDR",
                   type=_listen_address,
                   help='address to listen on, "host:port" (":10040" all addresses, '
                        '"[::1]:10040"); repeat for several (overrides listen in the config)')
    p.add_argument("--web.telemetry-path", dest="metrics_path", metavar="PATH",
                   type=_telemetry_path,
                   help="path under which to expose metrics (overrides metrics_path)")
    p.add_argument("--web.config.file", dest="web_config", metavar="FILE",
                   help="exporter-toolkit web configuration: TLS, basic auth, headers "
                        "(overrides web_config_file in the config)")
    p.add_argument("--web.systemd-socket", dest="systemd_socket", action="store_true",
                   help="serve on the listening sockets systemd passes (socket activation, "
                        "nflogd.socket) instead of --web.listen-address")
    p.add_argument("--log.level", dest="log_level", choices=["debug", "info", "warn", "error"],
                   help="only log messages of this severity or above (overrides log_level)")
    p.add_argument("--log-level", dest="log_level", action=_DeprecatedLogLevel,
                   choices=["debug", "info", "warning", "error"], help=argparse.SUPPRESS)
    p.add_argument("--log.format", dest="log_format", choices=logformat.FORMATS,
                   default="logfmt", help="output format of log messages (default logfmt)")
    p.add_argument("--version", action="version", version=f"nflogd {__version__}")
    return p.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> Callable[[Config], Config]:
    """The flags as a function applied to every config read (at start and on each reload)."""
    changes: dict[str, object] = {}
    if args.listen:
        changes["listen_addresses"] = tuple(dict.fromkeys(args.listen))  # once each, in order
    if args.metrics_path:
        changes["metrics_path"] = args.metrics_path
    if args.log_level:
        changes["log_level"] = "warning" if args.log_level == "warn" else args.log_level
    if args.web_config:
        changes["web_config_file"] = os.path.abspath(args.web_config)

    def apply(config: Config) -> Config:
        return dataclasses.replace(config, **changes) if changes else config  # type: ignore[arg-type]
    return apply


def load(path: str | None) -> tuple[Config, str | None]:
    """The config and the path to re-read on SIGHUP (None for built-in defaults)."""
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    if path is None:
        return default_config(), None
    return load_config(path), path


def release_large_buffers() -> None:
    """Make glibc give big freed buffers back to the kernel at once.

    A scrape builds megabytes of text on whichever HTTP worker thread serves it. By default glibc
    raises its mmap threshold after such a buffer is freed, so later ones come from per-thread
    arenas that keep the memory: RSS then grows with every thread that ever rendered a scrape.
    A fixed threshold keeps large buffers mmapped (freed on free) and stops that growth.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported late: --help, --version and --check-config must work without the extension.
    from .webconfig import WebConfigError, load_web_config

    if isinstance(args.check_config, str):
        if args.config and args.config != args.check_config:
            print("nflogd: --check-config FILE and --config FILE name different files",
                  file=sys.stderr)
            return EXIT_CONFIG
        args.config = args.check_config
    overrides = flag_overrides(args)
    try:
        config, path = load(args.config)
        config = overrides(config)
        if config.web_config_file:
            load_web_config(config.web_config_file)
    except (ConfigError, WebConfigError) as e:
        print(f"nflogd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"nflogd: {path or BUILTIN_SOURCE}: configuration is valid")
        return EXIT_OK

    logformat.setup(config.log_level, args.log_format)
    sockets: list[socket.socket] = []
    if args.systemd_socket:
        from .activation import ActivationError, listen_sockets
        try:
            sockets = listen_sockets()
        except ActivationError as e:
            logging.getLogger("nflogd").error("--web.systemd-socket: %s", e)
            return EXIT_CONFIG
    from .daemon import Daemon, StartupError, block_signals

    release_large_buffers()
    block_signals()  # before any thread starts: every thread inherits the mask
    daemon = Daemon(config, path, None, overrides=overrides, sockets=sockets)
    try:
        daemon.start()
    except StartupError as e:
        logging.getLogger("nflogd").error("%s", e)
        return EXIT_RUNTIME
    daemon.run()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
