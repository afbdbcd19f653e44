"""The metrics endpoint: HTTP/1.1 and HTTPS with exporter-toolkit's web config.

One module per job, read in this order:
- `server`: MetricsServer, the public face (start/stop/reload, stats);
- `connection`: one client connection on asyncio with h11 (the transport half);
- `admission`: which connections may stay when there are too many (the eviction policy);
- `handler`: what a complete request gets (auth, rate limit, routes, rendering);
- `auth`, `tls`, `ratelimit`, `responses`, `listen`, `limits`, `stats`, `logthrottle`: the policy
  pieces each of those uses.
"""

from __future__ import annotations

from .limits import Limits
from .server import MetricsServer
from .stats import ServerStats

__all__ = ["Limits", "MetricsServer", "ServerStats"]
