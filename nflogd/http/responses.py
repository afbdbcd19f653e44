"""What answers look like: status texts, the landing page, gzip negotiation, extra headers."""

from __future__ import annotations

import email.utils
import gzip
import html
from dataclasses import dataclass

from .. import __version__

Headers = tuple[tuple[str, str], ...]
TEXT = "text/plain; charset=utf-8"
HEALTHY_PATH = "/-/healthy"
READY_PATH = "/-/ready"

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True)
class Response:
    """One answer, handed from the policy (and the render threads) to the connection."""

    status: int
    body: bytes
    content_type: str = TEXT
    headers: Headers = ()
    close: bool = False  # close the connection after it (errors that leave framing unsure)

    def head_fields(self, extra: Headers) -> list[tuple[str, str]]:
        return [("Date", email.utils.formatdate(usegmt=True)),
                ("Content-Type", self.content_type),
                ("Content-Length", str(len(self.body))),
                *self.headers, *extra]


def plain(status: int, text: str | None = None, headers: Headers = (),
          close: bool = False) -> Response:
    body = (text if text is not None else f"{status} {REASONS.get(status, '')}\n").encode()
    return Response(status, body, TEXT, headers, close)


def landing_page(metrics_path: str) -> bytes:
    links = "".join(
        f"<li><a href=\"{html.escape(p, quote=True)}\">{html.escape(p)}</a> {what}</li>\n"
        for p, what in ((metrics_path, "metrics"), (HEALTHY_PATH, "200 while nflogd serves"),
                        (READY_PATH, "200 once every configured group is bound")))
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
            f"<title>nflogd</title></head>\n<body>\n<h1>nflogd</h1>\n"
            f"<p>Netfilter NFLOG records as Prometheus metrics "
            f"(version {html.escape(__version__)}).</p>\n<ul>\n{links}</ul>\n</body>\n</html>\n"
            ).encode()


def accepts_gzip(value: str | None) -> bool:
    if not value:
        return False
    for item in value.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def compress(body: bytes) -> bytes:
    # level 1: metrics text shrinks ~10x already, at a fraction of the CPU of level 6
    return gzip.compress(body, compresslevel=1, mtime=0)
