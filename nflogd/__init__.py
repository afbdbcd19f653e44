"""nflogd: netfilter NFLOG records aggregated into Prometheus metrics."""

__version__ = "0.1.0"
