"""Optional LLM narrative for one observation (`ks agent explain ID`), from any provider.

Providers ([llm] provider in the config file): "gemini" (google-genai, with
$GEMINI_API_KEY) and "openai": any OpenAI-compatible chat-completions
endpoint (OpenAI itself, or on the host: a llama.cpp server, Ollama, vLLM;
[llm] base_url, a key only if the server wants one).  Both run the same
bounded tool-calling loop: the model gets the observation and the read-only
tools of ks-agent as function declarations (query_database,
get_current_features, compare_baseline, correlate_events, analyze_logs).
Every function call is dispatched to those tools and nothing else: there is
no shell, no command is ever run, a name outside the five gets an error
back, and so does a refused query.  The loop is bounded in turns and time (a
per-request HTTP timeout, a deadline for the whole explanation, no retries).

What leaves the host (egress.py): the tools run in LLM mode (a table and
column allow-list: no argv, addresses, paths or host name), each call in a
bounded child (bounded.py); every string is redacted (command lines,
secrets, KEY=value); the observation and each tool result go inside an
<untrusted-data> block that the system prompt says is data, never
instructions.  Every HTTP request is appended, exactly as sent (the body;
no headers, so no key), to an audit file (mode 0600: [llm] audit_file,
default DATA_DIR/llm_audit.jsonl).

The result (narrative + hypotheses) is stored beside the observation: the
text in observations.narrative (shown by `ks report`), and the whole record
(model, hypotheses, the tool calls made) appended to DATA_DIR/narratives.jsonl.
Without a provider configured it is the offline diagnosis (the observation's
own summary, evidence, context and hints) and nothing else changes.

Base URL: [llm] base_url or the hidden --base-url (or $KS_GEMINI_BASE_URL for
Gemini); the tests point it at loopback stand-ins of both REST APIs.
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
from .egress import SYSTEM_NOTE, redact, redact_text, untrusted_block
from .readonly_sql import QueryRefused
from .tools import BoundedTools, ToolError

PROVIDERS = ("gemini", "openai")
DEFAULT_MODEL = "gemini-2.5-flash"
MAX_TURNS = 8
REQUEST_TIMEOUT_S = 60.0
DEADLINE_S = 180.0
MAX_TOOL_RESULT_CHARS = 20_000
NO_KEY = "GEMINI_API_KEY is not set: showing the offline diagnosis"
NO_SDK = ("GEMINI_API_KEY is set but google-genai is not installed (pip install 'kernelsight[llm]'): "
          "showing the offline diagnosis")
NO_OPENAI_ENDPOINT = ("[llm] provider is openai but neither base_url nor the API key is set: "
                      "showing the offline diagnosis")
NO_OPENAI_SDK = ("[llm] provider is openai but the openai package is not installed (pip install "
                 "'kernelsight[llm]'): showing the offline diagnosis")

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
ranked most likely first.
""" + SYSTEM_NOTE


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

def for_model(source: str, obj, max_chars: int = MAX_TOOL_RESULT_CHARS) -> str:
    """What the model is shown of host data: redacted JSON (numpy and odd types as strings), cut to
    max_chars, inside an <untrusted-data> block."""
    raw = orjson.dumps(redact(orjson.loads(orjson.dumps(
        obj, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)))).decode()
    if len(raw) > max_chars:
        raw = (raw[:max_chars] + f"... [cut to {max_chars} of {len(raw)} characters: ask for fewer rows or "
               "columns]")
    return untrusted_block(source, raw)


def _str_arg(args: dict, name: str, default: str | None = None) -> str:
    v = args.get(name, default)
    if not isinstance(v, str) or not v.strip():
        raise ToolError(f"argument {name!r} must be a non-empty string")
    return v


def call_tool(tools: BoundedTools, name: str, args: dict | None,
              max_chars: int = MAX_TOOL_RESULT_CHARS) -> tuple[dict, bool]:
    """Run one of the five read-only tools in its bounded child; returns (response for the model, ok):
    {"untrusted_data": for_model(...)} or {"error": ...}.  Never raises for the model's mistakes: an
    unknown tool, bad arguments, a refused query, a call cut off by its time or memory bound all come
    back as an error (and are logged by BoundedTools)."""
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
        return {"error": redact_text(str(e))}, False  # our text, but it may quote what the model or host wrote
    except Exception as e:  # a tool bug must not end the explanation; the model is told
        return {"error": redact_text(f"tool failed: {type(e).__name__}: {e}")}, False
    return {"untrusted_data": for_model(f"tool:{name}", res, max_chars)}, True


# -- the audit file: every request body, exactly as sent --------------------------------------------------

class Audit:
    """Appends one JSON line per HTTP request the provider's client sends (an httpx request hook, so
    it is the body on the wire): time, provider, model, observation, method, URL without its query,
    and the body as text.  Headers (the API key) are not recorded.  Mode 0600."""

    def __init__(self, path: Path, provider: str, model: str, observation_id: int):
        self.path = Path(path)
        self.meta = {"provider": provider, "model": model, "observation_id": observation_id}
        self.requests = 0

    def hook(self, request) -> None:
        body = request.content.decode("utf-8", "replace")
        rec = {"ts": time.time(), **self.meta, "method": request.method,
               "url": str(request.url.copy_with(query=None)), "body": body}
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older file with a looser mode is tightened
            os.write(fd, orjson.dumps(rec) + b"\n")
        finally:
            os.close(fd)
        self.requests += 1


def _http_client(audit: Audit, timeout_s: float):
    import httpx2

    return httpx2.Client(timeout=timeout_s, event_hooks={"request": [audit.hook]})


# -- providers: one request per turn, tool results appended in the provider's own format ---------------

@dataclass
class ToolCall:
    id: str
    name: str
    args: dict
    bad_args: str | None = None  # arguments that were not a JSON object: told to the model


class GeminiChat:
    """google-genai generate_content with function declarations; automatic function calling off."""

    def __init__(self, api_key: str, model: str, base_url: str | None, timeout_s: float, audit: Audit):
        from google import genai
        from google.genai import types

        self.types, self.model, self.timeout_s = types, model, timeout_s
        self.http = _http_client(audit, timeout_s)
        opts = types.HttpOptions(base_url=base_url or os.environ.get("KS_GEMINI_BASE_URL") or None,
                                 timeout=int(timeout_s * 1000), httpx_client=self.http)
        self.client = genai.Client(api_key=api_key, vertexai=False, http_options=opts)
        tool_cfg = [types.Tool(function_declarations=[
            types.FunctionDeclaration(name=n, description=d, parameters=types.Schema.model_validate(p))
            for n, (d, p) in TOOL_SPECS.items()])]
        base = dict(system_instruction=SYSTEM, temperature=0.2,
                    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
        self.cfg = types.GenerateContentConfig(tools=tool_cfg, **base)
        self.last_cfg = types.GenerateContentConfig(  # the last turn: answer now, no more tools
            tools=tool_cfg, tool_config=types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(mode="NONE")), **base)
        self.contents: list = []

    def start(self, prompt: str) -> None:
        self.contents = [self.types.Content(role="user", parts=[self.types.Part.from_text(text=prompt)])]

    def ask(self, last: bool, timeout_s: float | None = None) -> tuple[str, list[ToolCall]]:
        # the per-request timeout is the client's (set once); the deadline is checked between turns
        try:
            resp = self.client.models.generate_content(model=self.model, contents=self.contents,
                                                       config=self.last_cfg if last else self.cfg)
        except Exception as e:
            raise self._classify(e) from None
        if not resp.candidates or resp.candidates[0].content is None:
            why = getattr(getattr(resp, "prompt_feedback", None), "block_reason", None)
            raise LLMError(f"the model returned no answer (block reason: {why})")
        content = resp.candidates[0].content
        fcs = [p.function_call for p in (content.parts or []) if p.function_call]
        if fcs:
            self.contents.append(content)
            return "", [ToolCall(f.id or f.name or "", f.name or "", dict(f.args or {})) for f in fcs]
        text = "".join(p.text for p in (content.parts or [])
                       if getattr(p, "text", None) and not getattr(p, "thought", False))
        if not text.strip():
            raise LLMError(f"the model returned an empty answer (finish reason: {resp.candidates[0].finish_reason})")
        return text, []

    def answer(self, results: list[tuple[ToolCall, dict]]) -> None:
        parts = [self.types.Part.from_function_response(name=c.name, response=out) for c, out in results]
        self.contents.append(self.types.Content(role="user", parts=parts))

    def _classify(self, e: Exception) -> LLMError:
        from google.genai import errors

        if isinstance(e, errors.APIError):
            return LLMError(f"Gemini API error {e.code} {e.status or ''}: {(e.message or '')[:300]}".strip())
        return _transport_error(e, self.timeout_s, "the Gemini API")

    def close(self) -> None:
        self.client.close()
        self.http.close()


def _transport_error(e: Exception, timeout_s: float, what: str) -> LLMError:
    names = {c.__name__ for c in type(e).__mro__}
    if any("Timeout" in n for n in names):
        return LLMError(f"the model did not answer within {timeout_s:g} s (timeout)")
    if any(n in names for n in ("ConnectError", "ConnectionError", "NetworkError", "TransportError",
                                "APIConnectionError")):
        return LLMError(f"cannot reach {what}: {type(e).__name__}: {e}")
    return LLMError(f"request to {what} failed: {type(e).__name__}: {e}")


def _openai_schema(spec):
    """Gemini's upper-case schema types as JSON Schema (lower case) for the OpenAI tools format."""
    if isinstance(spec, dict):
        return {k: (v.lower() if k == "type" and isinstance(v, str) else _openai_schema(v)) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_openai_schema(v) for v in spec]
    return spec


class OpenAIChat:
    """Chat completions with tools on any OpenAI-compatible endpoint (the openai client, no retries)."""

    def __init__(self, api_key: str, model: str, base_url: str | None, timeout_s: float, audit: Audit):
        import openai

        self.openai, self.timeout_s = openai, timeout_s
        self.http = _http_client(audit, timeout_s)
        # a local server needs no key, but the client insists on one: a placeholder that says so
        self.client = openai.OpenAI(api_key=api_key or "no-key-local-server", base_url=base_url or None,
                                    timeout=timeout_s, max_retries=0, http_client=self.http)
        self.what = f"the OpenAI-compatible endpoint {base_url or 'api.openai.com'}"
        self.model = model or self._first_model()
        audit.meta["model"] = self.model
        self.tools = [{"type": "function", "function": {"name": n, "description": d,
                                                        "parameters": _openai_schema(p)}}
                      for n, (d, p) in TOOL_SPECS.items()]
        self.messages: list[dict] = []

    def _first_model(self) -> str:
        try:
            models = self.client.models.list().data
        except Exception as e:
            raise self._classify(e) from None
        if not models:
            raise LLMError(f"{self.what} lists no model: set [llm] model")
        return models[0].id

    def start(self, prompt: str) -> None:
        self.messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]

    def ask(self, last: bool, timeout_s: float | None = None) -> tuple[str, list[ToolCall]]:
        self.timeout_s = timeout_s or self.timeout_s
        try:
            resp = self.client.with_options(timeout=self.timeout_s).chat.completions.create(model=self.model, messages=self.messages, tools=self.tools,
                                                       tool_choice="none" if last else "auto", temperature=0.2)
        except Exception as e:
            raise self._classify(e) from None
        if not resp.choices:
            raise LLMError("the model returned no answer (no choices)")
        msg = resp.choices[0].message
        if msg.tool_calls:
            self.messages.append({"role": "assistant", "content": msg.content,
                                  "tool_calls": [{"id": c.id, "type": "function", "function": {
                                      "name": c.function.name, "arguments": c.function.arguments}}
                                      for c in msg.tool_calls]})
            calls = []
            for c in msg.tool_calls:
                try:
                    args = orjson.loads(c.function.arguments or "{}")
                except orjson.JSONDecodeError:
                    args = None
                calls.append(ToolCall(c.id, c.function.name, args, None) if isinstance(args, dict) else
                             ToolCall(c.id, c.function.name, {}, "arguments must be a JSON object"))
            return "", calls
        if not (msg.content or "").strip():
            raise LLMError(f"the model returned an empty answer (finish reason: {resp.choices[0].finish_reason})")
        return msg.content, []

    def answer(self, results: list[tuple[ToolCall, dict]]) -> None:
        for c, out in results:
            content = out["untrusted_data"] if "untrusted_data" in out else orjson.dumps(out).decode()
            self.messages.append({"role": "tool", "tool_call_id": c.id, "content": content})

    def _classify(self, e: Exception) -> LLMError:
        if isinstance(e, LLMError):
            return e
        if isinstance(e, self.openai.APIStatusError):
            return LLMError(f"OpenAI-compatible API error {e.status_code}: {str(e.message)[:300]}")
        return _transport_error(e, self.timeout_s, self.what)

    def close(self) -> None:
        self.client.close()
        self.http.close()


# -- the loop ----------------------------------------------------------------------------------------------

def observation_prompt(obs: dict) -> str:
    shown = {k: obs[k] for k in ("id", "rule", "label", "status", "severity", "signal_category", "persistence",
                                 "first_seen", "last_seen", "closed_at", "processes")}
    shown["observation"] = obs["observation"]
    return ("Explain this observation (the rule engine's record; its text fields come from the host):\n"
            + for_model("observation", shown, max_chars=10 * MAX_TOOL_RESULT_CHARS))


def explain(data_dir: Path, obs: dict, api_key: str, model: str = DEFAULT_MODEL, base_url: str | None = None,
            request_timeout_s: float = REQUEST_TIMEOUT_S, deadline_s: float = DEADLINE_S,
            max_turns: int = MAX_TURNS, bounds: Bounds = Bounds(), provider: str = "gemini",
            audit_path: Path | None = None, max_tool_result_chars: int = MAX_TOOL_RESULT_CHARS,
            log=None) -> Explanation:
    """Run the tool-calling loop for one observation; raises LLMError on any failure."""
    if provider not in PROVIDERS:
        raise LLMError(f"unknown [llm] provider {provider!r}: one of {', '.join(PROVIDERS)}")
    started = time.monotonic()
    audit = Audit(audit_path or Path(data_dir) / "llm_audit.jsonl", provider, model, obs["id"])
    chat_cls = GeminiChat if provider == "gemini" else OpenAIChat
    chat = chat_cls(api_key, model, base_url, request_timeout_s, audit)
    chat.start(observation_prompt(obs))
    calls: list[dict] = []
    tools = BoundedTools(data_dir, bounds, log=log, llm_mode=True)
    try:
        for turn in range(1, max_turns + 1):
            left = deadline_s - (time.monotonic() - started)
            if left <= 0:
                raise LLMError(f"no answer within the {deadline_s:g} s deadline after {turn - 1} turn(s)")
            text, fcs = chat.ask(last=turn == max_turns, timeout_s=min(request_timeout_s, left))
            if not fcs:
                narrative, hyps = split_answer(text)
                return Explanation(obs["id"], chat.model, narrative, hyps, turn, calls, int(time.time()))
            results = []
            for fc in fcs:
                if fc.bad_args:
                    out, ok = {"error": fc.bad_args}, False
                else:
                    out, ok = call_tool(tools, fc.name, fc.args, max_tool_result_chars)
                calls.append({"turn": turn, "name": fc.name, "args": fc.args, "ok": ok,
                              **({} if ok else {"error": out["error"]})})
                results.append((fc, out))
            chat.answer(results)
        raise LLMError(f"no answer after {max_turns} turns")
    finally:
        chat.close()


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
