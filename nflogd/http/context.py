"""What every connection of one server shares: limits, counters, the policy in force."""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from typing import Callable

from ..webconfig import WebConfig
from .admission import Admission
from .auth import BasicAuth
from .limits import Limits
from .logthrottle import LogThrottle
from .ratelimit import TokenBucket
from .responses import Headers, landing_page
from .stats import Tally
from .tls import TLSContexts

log = logging.getLogger("nflogd.http")

Render = Callable[["str | None"], "tuple[bytes, str]"]
Readiness = Callable[[], "tuple[bool, str]"]


@dataclass(frozen=True)
class Policy:
    """Everything a reload swaps besides TLS, replaced whole so a request sees one config."""

    auth: BasicAuth
    limiter: TokenBucket | None
    headers: Headers  # http_server_config.headers, on every response


def make_policy(config: WebConfig | None, bcrypt_pool: concurrent.futures.Executor,
                previous: Policy | None = None) -> Policy:
    users = config.basic_auth_users if config else {}
    excluded = config.basic_auth_excluded_paths if config else ()
    auth = BasicAuth(users, excluded, bcrypt_pool, previous.auth if previous else None)
    limiter = None
    rl = config.rate_limit if config else None
    if rl is not None:
        old = previous.limiter if previous else None
        same = old is not None and (old.interval, old.burst) == (rl.interval, rl.burst)
        limiter = old if same else TokenBucket(rl.interval, rl.burst)
    return Policy(auth=auth, limiter=limiter,
                  headers=tuple((config.headers if config else {}).items()))


@dataclass(frozen=True)
class Paths:
    metrics: str
    landing: bytes


def make_paths(metrics_path: str) -> Paths:
    if not metrics_path.startswith("/") or metrics_path == "/":
        raise ValueError(f"metrics_path must start with / and not be /: {metrics_path!r}")
    return Paths(metrics_path, landing_page(metrics_path))


class ServerContext:
    """Built by MetricsServer; read by connections and the handler on the event loop. `policy`,
    `paths` and `tls` are swapped by reload() from another thread: each is one reference."""

    def __init__(self, limits: Limits, tls: TLSContexts, policy: Policy, paths: Paths,
                 render: Render, readiness: Readiness,
                 render_pool: concurrent.futures.Executor,
                 bcrypt_pool: concurrent.futures.Executor) -> None:
        self.limits = limits
        self.tally = Tally()
        self.admission = Admission(limits, self.tally)
        self.tls = tls
        self.policy = policy
        self.paths = paths
        self.render = render
        self.readiness = readiness
        self.render_pool = render_pool
        self.bcrypt_pool = bcrypt_pool
        self.bcrypt_waiting = 0
        self.stopping = False
        self.throttle = LogThrottle(log, limits.log_interval)
