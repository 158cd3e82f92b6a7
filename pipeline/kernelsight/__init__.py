"""KernelSight: kernel telemetry through eBPF and /proc, stored, learned and explained."""

__version__ = "0.1.0"
