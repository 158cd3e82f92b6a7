"""The agent's tools on a hostile host (issue 17): every attack the issue reproduced, replayed through
the tools as the model calls them (BoundedTools: a forked child with a wall-clock and a memory bound).
Each must be refused or cut off, with a clear error for the model and a warning in the log.

The bounds are the product's (the [llm] defaults, 1 s and 100 MB); what is asserted is how the
product reports them, never a race with the kernel.
"""

from __future__ import annotations

import sqlite3

import pytest
from structlog.testing import capture_logs

from kernelsight import db
from kernelsight.agent.bounded import BoundedRunner, Bounds, ToolCutOff
from kernelsight.agent.llm import call_tool
from kernelsight.agent.readonly_sql import QueryRefused, ReadOnlyDB
from kernelsight.agent.tools import BoundedTools, Tools, ToolError
from kernelsight.config import LLMConfig
from test_report import replay_incident

EIGHT_ROWS = " UNION ALL ".join(f"SELECT {i} AS i" for i in range(8))
# (tool, argument, what the error must say)
ATTACKS = [
    ("query_database", "SELECT fts3_tokenizer('simple')", "fts3_tokenizer() is not allowed"),
    ("query_database", f"SELECT zeroblob(4e8) FROM ({EIGHT_ROWS})", "zeroblob() is not allowed"),
    ("query_database", "SELECT printf('%.*c', 999999999, 'x')", "printf() is not allowed"),
    ("query_database", "SELECT format('%.*c', 999999999, 'x')", "format() is not allowed"),
    # no function at all: the string grows past SQLITE_LIMIT_LENGTH
    ("query_database", "WITH RECURSIVE c(x) AS (SELECT 'xx' UNION ALL SELECT x || x FROM c) "
                       "SELECT length(x) FROM c", "too big"),
    # nothing refuses it up front: the wall-clock bound kills the child
    ("query_database", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
     "cut off: the call ran longer than 0.9 s (killed)"),
    ("compare_baseline", "3650d", "longer than 24 h"),
    ("correlate_events", "100000h", "longer than 24 h"),
    ("analyze_logs", r"(a)\1", "no backreferences"),
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    replay_incident(d)
    logs = d / "logs"
    logs.mkdir()
    # the catastrophic-backtracking input of the issue (18 word characters, no '!'), and a long line
    (logs / "ks-ingest.log").write_text("aaaaaaaaaaaaaaaaaa\n" + "a" * 100_000 + "\nerror: refused line\n")
    return d


@pytest.fixture
def tools(hostile):
    cfg = LLMConfig()
    return BoundedTools(hostile, Bounds(cfg.tool_timeout_s, cfg.tool_memory_mb))


def test_the_defaults_are_the_issues_bounds():
    assert (LLMConfig().tool_timeout_s, LLMConfig().tool_memory_mb) == (0.9, 100.0)


@pytest.mark.parametrize("name,arg,says", ATTACKS, ids=[f"{a[0]}:{a[1][:30]}" for a in ATTACKS])
def test_attack_is_refused_or_cut_off_with_a_clear_error(tools, name, arg, says):
    key = "sql" if name == "query_database" else "pattern" if name == "analyze_logs" else "window"
    with capture_logs() as logs:
        out, ok = call_tool(tools, name, {key: arg})
    assert not ok and says in out["error"], out
    assert out["error"].startswith(("refused", "cut off", "bad pattern")), out
    (warn,) = [e for e in logs if e["log_level"] == "warning"]
    assert warn["event"] in ("tool call refused", "tool call cut off") and warn["tool"] == name
    assert warn["error"] == out["error"]
    st = tools.runner.last
    assert st.outcome in ("error", "cut_off") and st.peak_rss_growth_mb < 100


def test_catastrophic_regex_runs_in_linear_time(tools):
    # (\w+\w*)*! backtracks exponentially in Python's re; RE2 answers without backtracking
    out = tools.call("analyze_logs", r"(\w+\w*)*!")
    assert out["matches_per_file"] == {"ks-ingest.log": 0} and tools.runner.last.outcome == "ok"
    assert tools.call("analyze_logs", "refus|error")["matches_per_file"] == {"ks-ingest.log": 1}
    _, ok = call_tool(tools, "analyze_logs", {"pattern": r"(\w+\w*)*!"})
    assert ok


def test_memory_bound_cuts_off_a_call(hostile):
    def hog():
        chunks = []
        while True:
            chunks.append(bytearray(10 << 20))

    runner = BoundedRunner(Bounds(5.0, 100.0))
    with pytest.raises(ToolCutOff, match="needed more than 100 MB"):
        runner.run(hog)
    assert runner.last.outcome == "cut_off" and runner.last.peak_rss_growth_mb < 100
    assert runner.run(lambda: len(bytearray(20 << 20))) == 20 << 20  # what fits still runs


def test_results_are_capped_in_bytes_while_fetched(hostile):
    ro = ReadOnlyDB(db.db_path(hostile), max_result_bytes=10_000)
    big = ro.query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 500) "
                   "SELECT x, hex(x) || substr(quote(x), 1, 1) || replace(hex(x), '3', '333333333333333') FROM c")
    assert big["truncated"] and "bytes" in big["note"] and 0 < len(big["rows"]) < 500
    rows = ro.query("SELECT ts FROM memory_metrics")
    assert not rows["truncated"] and len(rows["rows"]) > 60
    # our own code's queries keep the defaults: limits and the function allow-list apply to query() only
    assert ro.connection().execute("SELECT printf('%d', 1)").fetchone() == ("1",)
    assert ro.connection().getlimit(sqlite3.SQLITE_LIMIT_LENGTH) > 1_000_000
    ro.close()


def test_allowed_functions_and_limits(hostile):
    ro = ReadOnlyDB(db.db_path(hostile))
    r = ro.query("SELECT count(*), max(ts), round(avg(mem_available_kb) / 1024.0, 1), "
                 "strftime('%Y', max(ts) / 1000000000, 'unixepoch') FROM memory_metrics")
    assert r["rows"][0][0] > 60
    with pytest.raises(QueryRefused, match="load_extension"):
        ro.query("SELECT load_extension('/tmp/x.so')")
    with pytest.raises(QueryRefused, match="refused: .*too large"):
        ro.query("SELECT 1" + " + 1" * 200)  # SQLITE_LIMIT_EXPR_DEPTH
    ro.close()


def test_windows_are_capped_at_24h(hostile):
    t = Tools(hostile)
    with pytest.raises(ToolError, match="longer than 24 h"):
        t.compare_baseline("25h")
    assert t.correlate_events("10m")["window_s"] == 600
    t.close()
