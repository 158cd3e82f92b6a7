"""What every collector module provides: a spec (how to start the tool) and a parser."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..procutil import find_executable



class Parser:
    """Turns the tool's stdout, one complete line at a time, into event dicts.

    feed() gets each line without its newline; idle() is called when the tool
    has been quiet for a moment (so a histogram, whose end is not marked, can
    be emitted); finish() at EOF.  `clean` is False when the stream ended in
    the middle of a line (the tool died while writing).  Problems go to
    self.warnings (the runner logs them and counts them in warnings_total);
    lines that are neither data nor a known banner are counted in `skipped`.
    """

    event_types: tuple[str, ...] = ()

    def __init__(self, interval_s: int = 1) -> None:
        self.interval_s = interval_s
        self.warnings: list[str] = []
        self.skipped = 0

    def feed(self, line: str, now_ns: int) -> list[dict]:
        raise NotImplementedError

    def idle(self, now_ns: int) -> list[dict]:
        return []

    def finish(self, now_ns: int, clean: bool = True) -> list[dict]:
        return []

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def drain_warnings(self) -> list[str]:
        w, self.warnings = self.warnings, []
        return w


@dataclass(frozen=True)
class CollectorSpec:
    name: str                 # collector name (`run NAME`)
    tool: str                 # libbpf-tools executable
    doc: str
    args: Callable[[int], list[str]]  # interval (whole seconds) -> arguments
    parser: Callable[[int], Parser]  # interval (whole seconds) -> a fresh parser
    event_types: tuple[str, ...]
    attach: str               # what the tool attaches to on this kernel (human words)
    fallback: CollectorSpec | None = None  # used when the tool cannot attach
    # Run before start / after stop (fallbacks that need tracefs set-up).  setup()
    # returns the argv to run instead of [tool, *args] or None for the default.
    setup: Callable[[], list[str] | None] | None = None
    teardown: Callable[[], None] | None = None
    # For specs without a tool binary: None when usable here, else the reason.
    check: Callable[[], str | None] | None = None
    # True when the tool prints a line (banner or header) once attached; the
    # collector counts as running from that line.  False: running from spawn.
    banner: bool = True
    # The tool's perf buffer poll timeout (ms) when it waits on its perf buffers with nothing
    # else to do between records: the host preloads native/blockpoll/ks_blockpoll.c, which makes
    # that wait untimed (a record or a signal still ends it).  None: the tool runs as shipped.
    perf_poll_ms: int | None = None
    extra: dict = field(default_factory=dict)


def find_tool(tool: str) -> str | None:
    """Absolute path of a libbpf-tools binary, or None.  KS_TOOLS_DIR overrides."""
    return find_executable(tool, override_env="KS_TOOLS_DIR")


def split_lr(line: str, left: int, right: int) -> tuple[list[str], str, list[str]] | None:
    """Split a snoop line into `left` leading tokens, a middle (the command name,
    which may contain spaces) and `right` trailing tokens."""
    toks = line.split()
    if len(toks) < left + right + 1:
        return None
    head = toks[:left]
    tail = toks[len(toks) - right:] if right else []
    middle = " ".join(toks[left:len(toks) - right])
    return head, middle, tail


def to_int(s: str) -> int:
    return int(s)


def clip(s: str, n: int) -> str:
    """Cut a string so the JSON line stays under the 4096-byte FIFO limit."""
    return s if len(s) <= n else s[: n - 3] + "..."


class RegexRowParser(Parser):
    """Snoop output with fixed-width rows: lines before the header (starting with
    `header_prefix`) are banners; after it, each non-blank line must match
    `row_re` and make_event() turns the match into an event (None: unparsable)."""

    header_prefix = "PCOMM"
    row_re: re.Pattern[str]

    def __init__(self, interval_s: int = 1) -> None:
        super().__init__(interval_s)
        self.seen_header = False

    def feed(self, line: str, now_ns: int) -> list[dict]:
        if not self.seen_header:
            if line.startswith(self.header_prefix):
                self.seen_header = True
            elif line.strip():
                self.skipped += 1
            return []
        if not line.strip():
            return []
        m = self.row_re.match(line)
        ev = self.make_event(m, now_ns) if m else None
        if ev is None:
            self.skipped += 1
            self.warn(f"unparsable line: {line.strip()[:160]!r}")
            return []
        return [ev]

    def make_event(self, m: re.Match[str], now_ns: int) -> dict | None:
        raise NotImplementedError


class TableParser(Parser):
    """Snoop-style output: a header line naming the columns, then one row per event.

    Rows are split on whitespace; the column named `comm_col` (a command name,
    which may contain spaces) takes whatever is left between the columns
    before and after it.  With no `comm_col` a row must have exactly as many
    fields as the header.  Lines before the header (banners) are skipped.
    """

    header_first: tuple[str, ...] = ()   # first header token(s) that mark the header
    comm_col: str | None = "COMM"

    def __init__(self, interval_s: int = 1) -> None:
        super().__init__(interval_s)
        self.cols: list[str] | None = None

    def feed(self, line: str, now_ns: int) -> list[dict]:
        toks = line.split()
        if not toks:
            return []
        if toks[0] in self.header_first and (self.comm_col is None or self.comm_col in toks):
            self.cols = toks
            return []
        if self.cols is None:
            if not line.startswith(("Tracing", "Hit Ctrl-C")):
                self.skipped += 1
            return []
        if self.comm_col is None:
            if len(toks) != len(self.cols):
                return self._bad(line, f"{len(toks)} columns, header has {len(self.cols)}")
            row = dict(zip(self.cols, toks))
        else:
            i = self.cols.index(self.comm_col)
            parts = split_lr(line, i, len(self.cols) - i - 1)
            if parts is None:
                return self._bad(line, "too few columns")
            head, comm, tail = parts
            row = dict(zip(self.cols[:i], head))
            row[self.comm_col] = comm
            row.update(zip(self.cols[i + 1:], tail))
        try:
            ev = self.make_event(row, now_ns)
        except (ValueError, KeyError) as e:
            return self._bad(line, str(e))
        return [ev] if ev is not None else []

    def _bad(self, line: str, why: str) -> list[dict]:
        self.skipped += 1
        self.warn(f"unparsable line ({why}): {line.strip()[:160]!r}")
        return []

    def make_event(self, row: dict[str, str], now_ns: int) -> dict | None:
        raise NotImplementedError


def family_of(addr: str) -> int:
    return 6 if ":" in addr else 4
