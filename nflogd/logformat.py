"""Log lines as Prometheus exporters write them: logfmt (default) or JSON, one line per event.

    ts=2026-12-01T09:30:00.123Z level=info logger=nflogd msg="nflogd started: 1/1 groups bound"
    {"ts": "2026-12-01T09:30:00.123Z", "level": "info", "logger": "nflogd", "msg": "..."}

Under systemd, with stderr connected to the journal (JOURNAL_STREAM names stderr's device and
inode, see systemd.exec(5)), the journal stamps every line itself: ts= is left out, and each line
starts with the sd-daemon(3) priority prefix ("<3>" for an error), so `journalctl -p err` finds
errors. A traceback is folded into the one line (logfmt escapes newlines; JSON as usual), so one
event is always one journal entry.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO

FORMATS = ("logfmt", "json")
# --log.level names (Prometheus' own: "warn"), and the logging level each means.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}
# sd-daemon(3) priority prefixes: syslog levels.
_SD_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
                logging.ERROR: "error", logging.CRITICAL: "error"}


def journal_stream(stream: IO[str]) -> bool:
    """True when ``stream`` is the journal stream systemd connected (JOURNAL_STREAM=DEV:INODE)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\') and value.isprintable():
        return value
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif not c.isprintable():
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


class ExporterFormatter(logging.Formatter):
    """logfmt or JSON; ``timestamps=False`` leaves ts out and adds the journal priority prefix."""

    def __init__(self, fmt: str = "logfmt", timestamps: bool = True) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.timestamps = timestamps

    def fields(self, record: logging.LogRecord) -> list[tuple[str, str]]:
        out = []
        if self.timestamps:
            ms = int(record.msecs)
            out.append(("ts", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                        + f".{ms:03d}Z"))
        out.append(("level", _LEVEL_NAMES.get(record.levelno, record.levelname.lower())))
        out.append(("logger", record.name))
        out.append(("msg", record.getMessage()))
        if record.exc_info:
            out.append(("exc", self.formatException(record.exc_info).rstrip("\n")))
        if record.stack_info:
            out.append(("stack", record.stack_info.rstrip("\n")))
        return out

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        if self.fmt == "json":
            line = json.dumps(dict(fields), ensure_ascii=False)
        else:
            line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields)
        if not self.timestamps:
            line = f"<{_SD_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def setup(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``fmt`` at ``level`` and above."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ExporterFormatter(fmt, timestamps=not journal_stream(stream)))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
