"""`ks agent ...`: run the agent, call its tools."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import orjson
import typer

from .. import db, log as klog
from ..features.window import FEATURE_WINDOW_S

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="The diagnosis agent: observations from features, offline.")
tool_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                       help="The agent's read-only tools (the same an LLM would call).")
app.add_typer(tool_app, name="tool")


def _dir(d: Optional[Path]) -> Path:
    return d.absolute() if d else db.data_dir()


def _out(obj) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                                  default=str).decode() + "\n")


@app.command(help="Evaluate the rules every interval and keep observations up to date (run by `ks run`).\n\n"
             "Example: ks agent run --interval 5")
def run(data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
        interval: Optional[float] = typer.Option(None, min=0.5, help="seconds between evaluations (default: "
                                                 "FEATURE_STEP_S, the step of the stored feature vectors)"),
        once: bool = typer.Option(False, help="evaluate once and exit"),
        serve_metrics: bool = typer.Option(False, help="also serve /metrics ([exporter] in the config file)")) -> None:
    from .daemon import run_agent

    rc = run_agent(_dir(data_dir), interval, once, serve_metrics)
    if rc:
        raise typer.Exit(rc)


@app.command(help="Show the OOM forecast from recent memory samples.\n\nExample: ks agent forecast")
def forecast(data_dir: Optional[Path] = typer.Option(None), window: float = typer.Option(120.0, min=10)) -> None:
    from .forecast import forecast as fc

    conn = db.connect_readonly(db.db_path(_dir(data_dir)))
    _out(fc(conn, time.time_ns(), window).as_dict())


def _tools(data_dir: Optional[Path]):
    from .tools import Tools

    try:
        return Tools(_dir(data_dir))
    except db.StoreError as e:
        print(f"ks agent tool: {e}", file=sys.stderr)
        raise typer.Exit(1) from None


def _call(data_dir: Optional[Path], name: str, *args):
    """One tool call as the model makes it: in a bounded child ([llm] tool_timeout_s, tool_memory_mb)."""
    from ..config import ConfigError, load
    from .tools import BoundedTools, Bounds, QueryRefused, ToolCutOff, ToolError

    try:
        cfg = load().llm
        tools = BoundedTools(_dir(data_dir), Bounds(cfg.tool_timeout_s, cfg.tool_memory_mb),
                             log=klog.configure("ks-agent-tool"))
    except (db.StoreError, ConfigError) as e:
        print(f"ks agent tool: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    try:
        _out(tools.call(name, *args))
    except (QueryRefused, ToolError, ToolCutOff) as e:
        print(f"ks agent tool: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


@tool_app.command("query_database", help="Read-only SQL.\n\nExample: ks agent tool query_database "
                  "\"SELECT ts, mem_available_kb FROM memory_metrics ORDER BY ts DESC LIMIT 5\"")
def t_query(sql: str, data_dir: Optional[Path] = typer.Option(None)) -> None:
    _call(data_dir, "query_database", sql)


@tool_app.command("get_current_features", help="The latest feature vector (the one the agent stored, when fresh)."
                  "\n\nExample: ks agent tool get_current_features")
def t_features(data_dir: Optional[Path] = typer.Option(None),
               window: float = typer.Option(FEATURE_WINDOW_S, min=1, help="window in seconds")) -> None:
    _call(data_dir, "get_current_features", window)


@tool_app.command("compare_baseline", help="Features of the last WINDOW vs the baseline, worst first.\n\n"
                  "Example: ks agent tool compare_baseline 5m")
def t_compare(window: str = typer.Argument("5m"), data_dir: Optional[Path] = typer.Option(None)) -> None:
    _call(data_dir, "compare_baseline", window)


@tool_app.command("correlate_events", help="Observations, events and co-moving features in the last WINDOW.\n\n"
                  "Example: ks agent tool correlate_events 10m")
def t_correlate(window: str = typer.Argument("10m"), data_dir: Optional[Path] = typer.Option(None)) -> None:
    _call(data_dir, "correlate_events", window)


@tool_app.command("analyze_logs", help="RE2 regex (linear time) over the pipeline's logs and rejected lines.\n\n"
                  "Example: ks agent tool analyze_logs 'error|refus'")
def t_logs(pattern: str, data_dir: Optional[Path] = typer.Option(None)) -> None:
    _call(data_dir, "analyze_logs", pattern)


@tool_app.command("export_report", help="Report of recent observations (md, json or html) to stdout.\n\n"
                  "Example: ks agent tool export_report html > report.html")
def t_report(fmt: str = typer.Argument("md"), data_dir: Optional[Path] = typer.Option(None)) -> None:
    if fmt not in ("md", "json", "html"):
        print("ks agent tool: format must be md, json or html", file=sys.stderr)
        raise typer.Exit(2)
    sys.stdout.write(_tools(data_dir).export_report(fmt) + "\n")


@app.command(help="Explain an observation: with an LLM provider configured ([llm] in the config file: Gemini with "
             "GEMINI_API_KEY, or any OpenAI-compatible endpoint such as a local llama.cpp server), a tool-calling loop "
             "over the read-only tools writes a narrative and hypotheses (stored beside the observation); otherwise "
             "the offline diagnosis.  Nothing the model writes is ever executed; what is sent is redacted and "
             "audited (DATA_DIR/llm_audit.jsonl).\n\n"
             "Exit status: 0 explained (or offline diagnosis without a provider), 1 no such observation or database "
             "or a bad config, 3 the model failed (API error or timeout: the error on stderr, the offline diagnosis "
             "on stdout).\n\n"
             "Example: ks agent explain 12")
def explain(observation_id: int = typer.Argument(..., help="id from `ks observations`"),
            data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
            model: Optional[str] = typer.Option(None, help="model (default [llm] model, $KS_GEMINI_MODEL or "
                                                "gemini-2.5-flash for Gemini)"),
            max_turns: Optional[int] = typer.Option(None, min=1, max=30, help="model calls at most "
                                                    "(default [llm] max_turns)"),
            timeout: Optional[float] = typer.Option(None, min=0.1, help="seconds per model request "
                                                    "(default [llm] request_timeout_s)"),
            deadline: Optional[float] = typer.Option(None, min=1, help="seconds for the whole explanation "
                                                     "(default [llm] deadline_s)"),
            base_url: Optional[str] = typer.Option(None, hidden=True, help="API base URL (tests; default "
                                                   "[llm] base_url or $KS_GEMINI_BASE_URL)")) -> None:
    import importlib
    import os

    from ..config import ConfigError, load
    from . import llm
    from .bounded import Bounds

    d = _dir(data_dir)
    try:
        cfg = load().llm
        obs = llm.load_observation(d, observation_id)
    except (db.StoreError, ConfigError) as e:
        print(f"ks agent explain: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if obs is None:
        print(f"ks agent explain: no observation {observation_id} (see `ks observations --all`)", file=sys.stderr)
        raise typer.Exit(1)
    if cfg.provider not in llm.PROVIDERS:
        print(f"ks agent explain: unknown [llm] provider {cfg.provider!r}: one of {', '.join(llm.PROVIDERS)}",
              file=sys.stderr)
        raise typer.Exit(1)
    gemini = cfg.provider == "gemini"
    key_env = cfg.api_key_env or ("GEMINI_API_KEY" if gemini else "OPENAI_API_KEY")
    key = (os.environ.get(key_env) or "").strip()
    url = base_url or cfg.base_url or None
    if gemini and not key:
        print(llm.NO_KEY if key_env == "GEMINI_API_KEY" else f"{key_env} is not set: showing the offline diagnosis")
        print(llm.offline_diagnosis(obs))
        return
    if not gemini and not (key or url):
        print(llm.NO_OPENAI_ENDPOINT)
        print(llm.offline_diagnosis(obs))
        return
    try:
        importlib.import_module("google.genai" if gemini else "openai")
    except ImportError:
        print(llm.NO_SDK if gemini else llm.NO_OPENAI_SDK)
        print(llm.offline_diagnosis(obs))
        return
    name = model or cfg.model or (os.environ.get("KS_GEMINI_MODEL") or llm.DEFAULT_MODEL if gemini else "")
    try:
        ex = llm.explain(d, obs, key, model=name, base_url=url, provider=cfg.provider,
                         request_timeout_s=timeout or cfg.request_timeout_s, deadline_s=deadline or cfg.deadline_s,
                         max_turns=max_turns or cfg.max_turns, bounds=Bounds(cfg.tool_timeout_s, cfg.tool_memory_mb),
                         audit_path=Path(cfg.audit_file) if cfg.audit_file else None,
                         max_tool_result_chars=cfg.max_tool_result_chars, log=klog.configure("ks-agent-explain"))
    except llm.LLMError as e:
        print(f"ks agent explain: {e}; showing the offline diagnosis", file=sys.stderr)
        print(llm.offline_diagnosis(obs))
        raise typer.Exit(3) from None
    try:
        llm.store(d, ex)
        stored = "stored in observations.narrative and narratives.jsonl"
    except Exception as e:  # noqa: BLE001 - the answer is still printed, with why it was not stored
        stored = f"NOT stored: {type(e).__name__}: {e}"
    print(f"Observation {obs['id']}: [{obs['severity'].upper()}] {obs['label']} ({obs['status']})")
    print(f"Narrative by {ex.model} ({ex.turns} turn(s), {len(ex.tool_calls)} tool call(s); {stored}):\n")
    print(ex.text())
