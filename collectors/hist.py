"""log2 histograms as libbpf-tools print them, and percentiles from them.

The tools print (print_log2_hist in libbpf-tools/trace_helpers.c)::

         usecs               : count    distribution
             0 -> 1          : 10       |**                  |
             2 -> 3          : 193      |********************|

Row i covers the integer values [low, high]; after the first row
low = 2**i and high = 2**(i+1) - 1.  Rows stop at the highest non-empty
bucket, so missing trailing rows are zero.

Percentiles are estimated by linear interpolation inside the bucket that
holds the p-th sample: the bucket is treated as the continuous range
[low, high + 1) with its samples spread evenly, so for rank r = p * N,
value = low + (high + 1 - low) * (r - samples_below) / bucket_count.
The estimate is always inside the true bucket; its error is at most the
bucket width (a factor of 2 for log2 buckets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# "  low -> high  : count  |***|"; the bar may be missing or cut off.
ROW_RE = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*:\s*(\d+)\s*(?:\|.*)?$")
# "     usecs               : count    distribution"
HEADER_RE = re.compile(r"^\s*(\S+)\s*:\s*count\s+distribution\s*$")

# Multiplier from the unit word in the header to microseconds.
UNIT_TO_US = {
    "nsecs": 0.001,
    "usecs": 1.0,
    "msecs": 1000.0,
    "secs": 1_000_000.0,
}


class HistError(ValueError):
    pass


@dataclass
class Log2Hist:
    unit: str  # as printed in the header: usecs, msecs, nsecs, ...
    lows: list[int] = field(default_factory=list)
    highs: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def add_row(self, low: int, high: int, count: int) -> None:
        if self.highs and low <= self.highs[-1]:
            raise HistError(f"bucket {low} -> {high} is not above the previous one ({self.highs[-1]})")
        if high < low:
            raise HistError(f"bucket {low} -> {high} is inverted")
        self.lows.append(low)
        self.highs.append(high)
        self.counts.append(count)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def scale_to_us(self) -> float:
        try:
            return UNIT_TO_US[self.unit]
        except KeyError:
            raise HistError(f"unknown histogram unit {self.unit!r}") from None

    def percentile(self, p: float) -> float | None:
        """Estimated p-quantile (0 < p <= 1) in the histogram's own unit; None when empty."""
        n = self.total
        if n == 0:
            return None
        rank = p * n
        below = 0
        for low, high, c in zip(self.lows, self.highs, self.counts):
            if c and below + c >= rank:
                frac = (rank - below) / c
                return low + (high + 1 - low) * frac
            below += c
        return float(self.highs[-1] + 1)  # pragma: no cover - rounding only

    def percentile_us(self, p: float) -> float | None:
        v = self.percentile(p)
        return None if v is None else round(v * self.scale_to_us(), 3)

    def max_us(self) -> int | None:
        """Upper bound (exclusive) of the highest non-empty bucket, in µs."""
        for high, c in zip(reversed(self.highs), reversed(self.counts)):
            if c:
                return int(round((high + 1) * self.scale_to_us()))
        return None

    def lows_us(self) -> list[int]:
        s = self.scale_to_us()
        return [int(round(low * s)) for low in self.lows]


def parse_header(line: str) -> str | None:
    """The unit word of a histogram header line, or None if it is not one."""
    m = HEADER_RE.match(line)
    return m.group(1) if m else None


def parse_row(line: str) -> tuple[int, int, int] | None:
    m = ROW_RE.match(line)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def parse_hist_text(text: str) -> list[Log2Hist]:
    """Every histogram in a block of text (for tests and one-shot use)."""
    out: list[Log2Hist] = []
    cur: Log2Hist | None = None
    for line in text.splitlines():
        unit = parse_header(line)
        if unit is not None:
            cur = Log2Hist(unit)
            out.append(cur)
            continue
        row = parse_row(line)
        if row is not None and cur is not None:
            cur.add_row(*row)
        elif cur is not None and line.strip():
            cur = None
    return out
