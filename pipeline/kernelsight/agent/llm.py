"""Optional LLM narrative for one observation (`ks agent explain ID`), Gemini first.

With GEMINI_API_KEY set (and the `llm` extra installed: google-genai), a
bounded tool-calling loop: the model gets the observation as JSON and the
read-only tools of ks-agent as function declarations (query_database,
get_current_features, compare_baseline, correlate_events, analyze_logs).
Every function call the model makes is dispatched to those Python methods and
nothing else: there is no shell, no command is ever run, and a name outside
the five gets an error back.  A refused query (anything but a read) goes back
to the model as the tool's error text, like any tool error.  The loop is
bounded in turns and in time (a per-request HTTP timeout and a deadline for
the whole explanation); the SDK's automatic function calling and retries are
off.

The result (narrative + hypotheses) is stored beside the observation: the
text in observations.narrative (shown by `ks report`), and the whole record
(model, hypotheses, the tool calls made) appended to DATA_DIR/narratives.jsonl.

Without a key it is the offline diagnosis (the observation's own summary,
evidence, context and hints) and nothing else changes.

Base URL: `base_url` (or $KS_GEMINI_BASE_URL; the SDK also honours
$GOOGLE_GEMINI_BASE_URL) goes to the SDK as HttpOptions(base_url=...); the
tests point it at a local stand-in of the REST API (models/M:generateContent).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .. import db
from ..features.catalog import FEATURE_WINDOW_S
from .bounded import Bounds, ToolCutOff
from .readonly_sql import QueryRefused
from .tools import BoundedTools, ToolError

DEFAULT_MODEL = "gemini-2.5-flash"
MAX_TURNS = 8
REQUEST_TIMEOUT_S = 60.0
DEADLINE_S = 180.0
MAX_TOOL_RESULT_CHARS = 20_000
NO_KEY = "GEMINI_API_KEY is not set: showing the offline diagnosis"
NO_SDK = ("GEMINI_API_KEY is set but google-genai is not installed (pip install 'kernelsight[llm]'): "
          "showing the offline diagnosis")

# The only functions the model can call: name -> (description, JSON-schema parameters).
TOOL_SPECS: dict[str, tuple[str, dict]] = {
    "query_database": (
        "Run ONE read-only SQL statement (SELECT, WITH ... SELECT, or a read-only PRAGMA such as "
        "table_info) on the KernelSight SQLite database; anything that writes is refused. Timestamps (ts) "
        "are Unix epoch nanoseconds. Returns {columns, rows, truncated} (at most 1000 rows).",
        {"type": "OBJECT", "properties": {"sql": {"type": "STRING", "description": "the SQL statement"}},
         "required": ["sql"]}),
    "get_current_features": (
        "The latest feature vector (all catalog features over the last window_s seconds, now), with the "
        "reason for every null.",
        {"type": "OBJECT", "properties": {"window_s": {"type": "NUMBER", "description": "window in seconds "
                                                       f"(default {FEATURE_WINDOW_S:g}, the stored vectors' window)"}}}),
    "compare_baseline": (
        "Features of the last window (ending now, at most 24h) against the learned baseline, worst z-score "
        "first; says so when no baseline has been learned.",
        {"type": "OBJECT", "properties": {"window": {"type": "STRING", "description": "like 60s, 5m, 2h "
                                                     "(default 5m)"}}}),
    "correlate_events": (
        "Observations, event counts and co-moving feature pairs (|r| >= 0.9) in the last window (ending now, "
        "at most 24h).",
        {"type": "OBJECT", "properties": {"window": {"type": "STRING", "description": "like 10m (default)"}}}),
    "analyze_logs": (
        "An RE2 regular expression (linear time: no backreferences or lookaround) over the pipeline's own "
        "log files and the reasons of rejected events.",
        {"type": "OBJECT", "properties": {"pattern": {"type": "STRING", "description": "RE2 regex"}},
         "required": ["pattern"]}),
}

SYSTEM = """You are the diagnosis assistant of KernelSight, a Linux host telemetry system.
You are given one observation (a symptom the offline rule engine raised) as JSON, and read-only tools
over the host's telemetry database. Investigate with the tools when useful, then answer.
- The tools only read. You cannot run commands on the host, and nothing you write is executed.
- Database timestamps (ts) are Unix epoch nanoseconds; the observation's first_seen/last_seen/closed_at
  are Unix seconds. get_current_features, compare_baseline and correlate_events describe the latest
  window (now); for the incident's own time, use query_database with a ts range.
- Do not invent numbers: quote what the observation or the tools returned.
Answer in plain text: a short narrative (what happened, when, how bad, what it affected, what the
evidence is), then a line "Hypotheses:" followed by 1 to 4 lines "- <hypothesis> (evidence: ...; check: ...)"
ranked most likely first."""


class LLMError(RuntimeError):
    """The explanation could not be produced (API error, timeout, no answer); the message says why."""


@dataclass
class Explanation:
    observation_id: int
    model: str
    narrative: str
    hypotheses: list[str]
    turns: int
    tool_calls: list[dict] = field(default_factory=list)
    generated_at: int = 0

    def text(self) -> str:
        out = self.narrative.strip()
        if self.hypotheses:
            out += "\n\nHypotheses:\n" + "\n".join(f"- {h}" for h in self.hypotheses)
        return out

    def as_dict(self) -> dict:
        return {"observation_id": self.observation_id, "model": self.model, "generated_at": self.generated_at,
                "narrative": self.narrative, "hypotheses": self.hypotheses, "turns": self.turns,
                "tool_calls": self.tool_calls}


# -- the observation and the offline diagnosis -------------------------------------------------------------

def load_observation(data_dir: Path, obs_id: int) -> dict | None:
    conn = db.connect_readonly(db.db_path(data_dir))
    try:
        row = conn.execute(
            "SELECT id, rule, label, status, severity, signal_category, persistence, first_seen, last_seen, "
            "closed_at, updates, summary, observation, processes, narrative FROM observations WHERE id = ?",
            (obs_id,)).fetchone()
    except sqlite3.OperationalError:  # no agent has run on this database
        row = None
    finally:
        conn.close()
    if row is None:
        return None
    keys = ("id", "rule", "label", "status", "severity", "signal_category", "persistence", "first_seen",
            "last_seen", "closed_at", "updates", "summary", "observation", "processes", "narrative")
    o = dict(zip(keys, row))
    o["observation"] = orjson.loads(o["observation"])
    o["processes"] = orjson.loads(o["processes"])
    return o


def _when(s) -> str:
    import datetime as dt

    return "-" if s is None else dt.datetime.fromtimestamp(s, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def offline_diagnosis(o: dict) -> str:
    """The rule engine's own diagnosis of an observation, as text."""
    ob = o["observation"]
    d = ob["details"]
    lines = [f"Observation {o['id']}: [{o['severity'].upper()}] {o['label']} ({o['status']}, {o['persistence']})",
             f"  {ob['summary']}",
             f"  first seen {_when(o['first_seen'])}, last seen {_when(o['last_seen'])}"
             + (f", closed {_when(o['closed_at'])}" if o.get("closed_at") else ""),
             f"  evidence: {d['metric']} = {d['current_value']} (baseline mean {d['baseline_mean']}, "
             f"z {d['zscore']}, trend {d['trend']})"]
    ctx = ob.get("context", {})
    if ctx.get("correlated_signals"):
        lines.append("  correlated signals: " + "; ".join(ctx["correlated_signals"]))
    if ctx.get("recent_changes"):
        lines.append("  recent changes: " + "; ".join(ctx["recent_changes"]))
    if o.get("processes"):
        lines.append("  processes: " + "; ".join(
            f"{p.get('comm')}" + (f" (pid {p['pid']})" if "pid" in p else "") for p in o["processes"]))
    if ob.get("reasoning_hints"):
        lines.append("  hints:")
        lines += [f"    - {h}" for h in ob["reasoning_hints"]]
    if o.get("narrative"):
        lines.append("  stored narrative:")
        lines += ["    " + x for x in o["narrative"].splitlines()]
    return "\n".join(lines)


# -- tool dispatch: the model's function calls go here and nowhere else ----------------------------------

def _jsonable(obj) -> dict:
    """Round-trip through JSON (numpy and odd types as strings) and cap the size sent back to the model."""
    raw = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)
    if len(raw) > MAX_TOOL_RESULT_CHARS:
        return {"truncated": True, "note": f"result cut to {MAX_TOOL_RESULT_CHARS} of {len(raw)} characters; "
                "ask for fewer rows or columns", "partial_json": raw[:MAX_TOOL_RESULT_CHARS].decode("utf-8", "ignore")}
    return orjson.loads(raw)


def _str_arg(args: dict, name: str, default: str | None = None) -> str:
    v = args.get(name, default)
    if not isinstance(v, str) or not v.strip():
        raise ToolError(f"argument {name!r} must be a non-empty string")
    return v


def call_tool(tools: BoundedTools, name: str, args: dict | None) -> tuple[dict, bool]:
    """Run one of the five read-only tools in its bounded child; returns (response for the model, ok).
    Never raises for the model's mistakes: an unknown tool, bad arguments, a refused query, a call cut
    off by its time or memory bound all come back as {"error": ...} (and are logged by BoundedTools)."""
    args = dict(args or {})
    try:
        if name == "query_database":
            res = tools.call(name, _str_arg(args, "sql"))
        elif name == "get_current_features":
            w = args.get("window_s", FEATURE_WINDOW_S)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 1 <= w <= 86400:
                raise ToolError("argument 'window_s' must be a number of seconds between 1 and 86400")
            res = tools.call(name, float(w))
        elif name in ("compare_baseline", "correlate_events"):
            res = tools.call(name, _str_arg(args, "window", "5m" if name == "compare_baseline" else "10m"))
        elif name == "analyze_logs":
            res = tools.call(name, _str_arg(args, "pattern"))
        else:
            return {"error": f"unknown tool {name!r}: the tools are {', '.join(TOOL_SPECS)}"}, False
    except (QueryRefused, ToolError, ToolCutOff) as e:
        return {"error": str(e)}, False
    except Exception as e:  # a tool bug must not end the explanation; the model is told
        return {"error": f"tool failed: {type(e).__name__}: {e}"}, False
    return {"result": _jsonable(res)}, True


# -- the loop ----------------------------------------------------------------------------------------------

def _declarations(types):
    return [types.FunctionDeclaration(name=n, description=d, parameters=types.Schema.model_validate(p))
            for n, (d, p) in TOOL_SPECS.items()]


def _classify(e: Exception, timeout_s: float) -> LLMError:
    from google.genai import errors

    if isinstance(e, errors.APIError):
        return LLMError(f"Gemini API error {e.code} {e.status or ''}: {(e.message or '')[:300]}".strip())
    names = {c.__name__ for c in type(e).__mro__}
    if any("Timeout" in n for n in names):
        return LLMError(f"the model did not answer within {timeout_s:g} s (timeout)")
    if any(n in names for n in ("ConnectError", "ConnectionError", "NetworkError", "TransportError")):
        return LLMError(f"cannot reach the Gemini API: {type(e).__name__}: {e}")
    return LLMError(f"Gemini request failed: {type(e).__name__}: {e}")


def _text(content) -> str:
    return "".join(p.text for p in (content.parts or []) if getattr(p, "text", None) and not getattr(p, "thought",
                                                                                                    False))


_HYP = re.compile(r"^\s*(?:#+\s*|\*\*)?hypothes[ie]s\b.*$", re.IGNORECASE | re.MULTILINE)
_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*\S)\s*$")


def split_answer(text: str) -> tuple[str, list[str]]:
    """(narrative, hypotheses) from the model's final text: a JSON object {narrative, hypotheses}, or text
    with a 'Hypotheses:' section of list items."""
    t = text.strip()
    if t.startswith("```"):
        t = re.sub(r"^```\w*\s*|\s*```$", "", t)
    if t.startswith("{"):
        try:
            d = orjson.loads(t)
            if isinstance(d, dict) and isinstance(d.get("narrative"), str):
                hyps = d.get("hypotheses") or []
                return d["narrative"].strip(), [str(h) for h in hyps] if isinstance(hyps, list) else [str(hyps)]
        except orjson.JSONDecodeError:
            pass
    m = _HYP.search(text)
    if not m:
        return text.strip(), []
    hyps = []
    for line in text[m.end():].splitlines():
        im = _ITEM.match(line)
        if im:
            hyps.append(im.group(1).strip())
        elif line.strip() and hyps:
            hyps[-1] += " " + line.strip()
    return text[:m.start()].strip(), hyps


def explain(data_dir: Path, obs: dict, api_key: str, model: str = DEFAULT_MODEL, base_url: str | None = None,
            request_timeout_s: float = REQUEST_TIMEOUT_S, deadline_s: float = DEADLINE_S,
            max_turns: int = MAX_TURNS, bounds: Bounds = Bounds()) -> Explanation:
    """Run the tool-calling loop for one observation; raises LLMError on any failure."""
    from google import genai
    from google.genai import types

    started = time.monotonic()
    http = types.HttpOptions(base_url=base_url or os.environ.get("KS_GEMINI_BASE_URL") or None,
                             timeout=int(request_timeout_s * 1000))
    client = genai.Client(api_key=api_key, vertexai=False, http_options=http)
    tool_cfg = [types.Tool(function_declarations=_declarations(types))]
    base_cfg = dict(system_instruction=SYSTEM, temperature=0.2,
                    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    cfg = types.GenerateContentConfig(tools=tool_cfg, **base_cfg)
    last_cfg = types.GenerateContentConfig(  # the last turn: answer now, no more tools
        tools=tool_cfg, tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="NONE")),
        **base_cfg)
    shown = {k: obs[k] for k in ("id", "rule", "label", "status", "severity", "signal_category", "persistence",
                                 "first_seen", "last_seen", "closed_at", "processes")}
    shown["observation"] = obs["observation"]
    prompt = ("Explain this observation. Observation JSON:\n"
              + orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    contents = [types.Content(role="user", parts=[types.Part.from_text(text=prompt)])]
    calls: list[dict] = []
    tools = BoundedTools(data_dir, bounds)
    try:
        for turn in range(1, max_turns + 1):
            left = deadline_s - (time.monotonic() - started)
            if left <= 0:
                raise LLMError(f"no answer within the {deadline_s:g} s deadline after {turn - 1} turn(s)")
            try:
                resp = client.models.generate_content(model=model, contents=contents,
                                                      config=last_cfg if turn == max_turns else cfg)
            except LLMError:
                raise
            except Exception as e:
                raise _classify(e, request_timeout_s) from None
            if not resp.candidates or resp.candidates[0].content is None:
                why = getattr(getattr(resp, "prompt_feedback", None), "block_reason", None)
                raise LLMError(f"the model returned no answer (block reason: {why})")
            content = resp.candidates[0].content
            fcs = [p.function_call for p in (content.parts or []) if p.function_call]
            if not fcs:
                text = _text(content)
                if not text.strip():
                    raise LLMError(f"the model returned an empty answer (finish reason: "
                                   f"{resp.candidates[0].finish_reason})")
                narrative, hyps = split_answer(text)
                return Explanation(obs["id"], model, narrative, hyps, turn, calls, int(time.time()))
            contents.append(content)
            parts = []
            for fc in fcs:
                out, ok = call_tool(tools, fc.name or "", dict(fc.args or {}))
                calls.append({"turn": turn, "name": fc.name, "args": dict(fc.args or {}), "ok": ok,
                              **({} if ok else {"error": out["error"]})})
                parts.append(types.Part.from_function_response(name=fc.name or "", response=out))
            contents.append(types.Content(role="user", parts=parts))
        raise LLMError(f"no answer after {max_turns} turns")
    finally:
        client.close()


def store(data_dir: Path, ex: Explanation) -> None:
    """observations.narrative = the text; the full record appended to DATA_DIR/narratives.jsonl."""
    conn = sqlite3.connect(db.db_path(data_dir), timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        with conn:
            conn.execute("UPDATE observations SET narrative = ? WHERE id = ?", (ex.text(), ex.observation_id))
    finally:
        conn.close()
    fd = os.open(Path(data_dir) / "narratives.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "ab") as f:
        f.write(orjson.dumps(ex.as_dict(), default=str) + b"\n")
