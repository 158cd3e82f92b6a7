"""All collectors by name."""

from __future__ import annotations

from . import biopattern, execsnoop, exitsnoop, irqs, oom, runqlat, tcplife, tcpstates
from .base import CollectorSpec

COLLECTORS: dict[str, CollectorSpec] = {
    s.name: s
    for s in (
        runqlat.SPEC,
        tcpstates.SPEC,
        tcplife.SPEC,
        execsnoop.SPEC,
        exitsnoop.SPEC,
        biopattern.SPEC,
        irqs.HARDIRQS,
        irqs.SOFTIRQS,
        oom.SPEC,
    )
}

# Other libbpf-tools worth having that we do not wrap; `probe --all` reports
# whether they would attach here, as a map of this kernel's capabilities.
EXTRA_TOOLS: dict[str, list[str]] = {
    "runqlen": ["1"],
    "runqslower": [],
    "cpudist": ["1"],
    "offcputime": ["1"],
    "tcpconnlat": [],
    "tcpconnect": [],
    "tcprtt": ["-i", "1"],
    "tcpsynbl": ["1"],
    "tcptop": ["-C", "1"],
    "tcptracer": [],
    "biolatency": ["1"],
    "biosnoop": [],
    "biotop": ["-C", "1"],
    "cachestat": ["1"],
    "vfsstat": ["1"],
    "opensnoop": [],
    "syscount": ["-i", "1"],
    "drsnoop": [],
    "killsnoop": [],
    "sigsnoop": [],
    "capable": [],
    "bindsnoop": [],
    "solisten": [],
    "filelife": [],
    "readahead": [],
    "wakeuptime": [],
}
