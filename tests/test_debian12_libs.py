"""What Debian 12's library versions (the .deb runs on them) demand of nflogd, as a user would
meet it: basic auth starts, and an unknown user gets 401, every time.

bcrypt 3.2 refuses to hash a password holding a NUL byte, which bcrypt 4+ accepts: the dummy
hash an unknown user is checked against was made from 16 random bytes, so one start or reload in
sixteen failed on Debian 12 (found by test_deb.py). Under bcrypt 3.2 (make test-pythons runs
CPython 3.9 on Debian 12's versions) 100 starts hit that case with probability 1 - (15/16)^100
> 99.8 %; under newer bcrypt this passes either way.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt

from nflogd.http import MetricsServer
from nflogd.webconfig import load_web_config


def render(accept: str | None) -> tuple[bytes, str]:
    return b"up 1\n", "text/plain; version=0.0.4; charset=utf-8"


def test_basic_auth_starts_every_time(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()  # cost 4: fast
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    web = load_web_config(path)
    stranger = base64.b64encode(b"nobody:x").decode()
    for _ in range(100):
        server = MetricsServer([("127.0.0.1", 0)], metrics_path="/metrics", render=render,
                               web_config=web)
        server.start()
        try:
            host, port = server.addresses[0]
            req = urllib.request.Request(f"http://{host}:{port}/metrics",
                                         headers={"Authorization": f"Basic {stranger}"})
            try:
                urllib.request.urlopen(req, timeout=5)
                raise AssertionError("an unknown user was let in")
            except urllib.error.HTTPError as e:
                assert e.code == 401
        finally:
            server.stop()
