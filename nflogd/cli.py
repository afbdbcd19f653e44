"""Command line: nflogd [--config FILE] [--check-config [FILE]] [--version] [--log-level LEVEL]
[--web.config.file FILE].

Exit codes: 0 clean stop or valid config; 1 runtime failure (no group could be bound, cannot
listen); 2 usage or configuration error (bad arguments, bad config or web config file).

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
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Sequence  # noqa: E402

from . import __version__  # noqa: E402
from .config import (  # noqa: E402
    BUILTIN_SOURCE, DEFAULT_CONFIG_PATH, Config, ConfigError, default_config, load_config)

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
# glibc mallopt() parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nflogd", description="Count netfilter NFLOG records and serve them to Prometheus.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.")
    p.add_argument("--config", metavar="FILE",
                   help=f"YAML configuration (default: {DEFAULT_CONFIG_PATH} if it exists, "
                        "else built-in defaults)")
    p.add_argument("--check-config", nargs="?", const=True, metavar="FILE",
                   help="validate the configuration (FILE, else --config or the default) and its "
                        "web config, then exit: 0 valid, 2 not")
    p.add_argument("--web.config.file", dest="web_config", metavar="FILE",
                   help="exporter-toolkit web configuration: TLS, basic auth, headers "
                        "(overrides web_config_file in the config)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="override the config's log_level")
    p.add_argument("--version", action="version", version=f"nflogd {__version__}")
    return p.parse_args(argv)


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
    try:
        cfg, path = load(args.config)
        web_path = args.web_config or cfg.web_config_file
        if web_path:
            load_web_config(web_path)
    except (ConfigError, WebConfigError) as e:
        print(f"nflogd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"nflogd: {path or BUILTIN_SOURCE}: configuration is valid")
        return EXIT_OK

    logging.basicConfig(level=(args.log_level or cfg.log_level).upper(),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .daemon import Daemon, StartupError, block_signals

    release_large_buffers()
    block_signals()  # before any thread starts: every thread inherits the mask
    daemon = Daemon(cfg, path, args.web_config)
    try:
        daemon.start()
    except StartupError as e:
        logging.getLogger("nflogd").error("%s", e)
        return EXIT_RUNTIME
    daemon.run()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
