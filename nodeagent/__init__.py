"""nodeagent: one asyncio daemon per node that samples host, cgroup, network and GPU state for Prometheus."""

__version__ = "0.1.0"
