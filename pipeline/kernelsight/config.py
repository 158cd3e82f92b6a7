"""KernelSight's one config file: typed defaults, overridden from TOML.

Where it is read from (the first that applies):
  1. the `--config PATH` option, where a command has one;
  2. $KS_CONFIG;
  3. /etc/kernelsight/config.toml, if it exists;
  4. else the defaults below.

Each section is a dataclass; adding a section is adding a dataclass with
documented fields (field(default, metadata={"doc": ...})) and one field of
that type on Config: loading, checking, `python -m kernelsight.config` and the
generated docs/config.md follow from it.  Unknown sections and keys are an
error that names the file, the key and what is known, so a misspelt key never
silently leaves a default in force.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

ENV_VAR = "KS_CONFIG"
SYSTEM_PATH = Path("/etc/kernelsight/config.toml")


class ConfigError(ValueError):
    """A config file that cannot be used; the message says where and why."""


def _f(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class StorageConfig:
    """Retention and rollups of the SQLite database (housekeeping runs in ks-agent every minute)."""

    raw_retention_h: float = _f(48.0, "hours of raw rows kept in every event table; older rows are deleted "
                                      "once their minute is rolled up")
    raw_min_h: float = _f(6.0, "hours of newest raw rows the size cap leaves alone until no rollup is left to prune "
                               "(the agent and its tools read recent raw rows)")
    rollup_retention_d: float = _f(30.0, "days of the per-minute rollup tables (TABLE_1m) and of the "
                                         "thinned feature vectors kept")
    observation_retention_d: float = _f(365.0, "days of observations (closed ones, by last_seen) and OOM "
                                               "forecasts kept")
    max_db_mb: float = _f(1024.0, "size cap of the database (pages in use) plus its WAL, in MiB: above it the "
                                  "oldest raw rows are pruned first (down to raw_min_h), then the oldest rollups, "
                                  "then raw rows down to the newest rolled-up minute")
    prune_batch_rows: int = _f(5000, "rows deleted per transaction at first; the batch then adapts so one "
                                     "transaction holds the writer about prune_batch_target_ms")
    prune_batch_target_ms: float = _f(100.0, "target time one pruning transaction holds the database's writer lock")
    rollup_step_s: int = _f(60, "rollup resolution in seconds: one TABLE_1m row per key per step (the tables keep "
                                    "their _1m name; change it only on a new database)")
    housekeeping_interval_s: float = _f(60.0, "seconds between housekeeping runs in ks-agent")
    housekeeping_budget_s: float = _f(2.0, "work one housekeeping run in ks-agent may do before it yields "
                                           "to the next step (a backlog is worked off over several runs)")


@dataclass(frozen=True)
class LogsConfig:
    """Rotation of DATA_DIR/logs/*.log, observations.jsonl and stream/*.jsonl."""

    max_bytes: int = _f(16 * 1024 * 1024, "a file is rotated once it is larger than this (bytes)")
    keep: int = _f(3, "rotated copies kept (NAME.1 newest ... NAME.<keep> oldest)")


@dataclass(frozen=True)
class ExporterConfig:
    """ks-exporter: the pipeline's state as Prometheus metrics on http://ADDRESS:PORT/metrics (docs/prometheus.md)."""

    enabled: bool = _f(True, "serve /metrics under `ks run` (from a thread of ks-agent)")
    address: str = _f("127.0.0.1", "address the exporter binds to (0.0.0.0 exposes it to the network)")
    port: int = _f(9863, "TCP port of /metrics")


@dataclass(frozen=True)
class AlertsConfig:
    """ks-alerts: every observation that opens, changes severity or closes, sent to Alertmanager (API v2) and/or a
    JSON webhook; `ks run` starts it only when a URL is set (docs/prometheus.md)."""

    alertmanager_url: str = _f("", "Alertmanager base URL, e.g. http://127.0.0.1:9093 (alerts are POSTed to "
                                   "URL/api/v2/alerts); empty: not sent")
    webhook_url: str = _f("", "URL a JSON document of the changed alerts is POSTed to; empty: not sent")
    timeout_s: float = _f(5.0, "seconds one HTTP request may take")
    max_attempts: int = _f(5, "tries of one batch before it is dropped (and counted); a firing alert is sent "
                              "again at the next resend anyway")
    backoff_start_s: float = _f(1.0, "wait after the first failed try; doubles each try")
    backoff_max_s: float = _f(60.0, "longest wait between tries")
    resend_interval_s: float = _f(60.0, "firing alerts are sent again this often (Alertmanager resolves an alert "
                                        "it stops hearing about at its endsAt)")
    ends_at_factor: float = _f(4.0, "a firing alert's endsAt is now + this x resend_interval_s, so a dead sender's "
                                    "alerts resolve by themselves")
    poll_interval_s: float = _f(0.5, "seconds between reads of DATA_DIR/observations.jsonl")
    generator_url: str = _f("", "generatorURL of each alert; {id} is replaced by the observation id (empty: none)")


@dataclass(frozen=True)
class RemoteWriteConfig:
    """ks-remote-write: the samples ks-exporter serves, pushed by Prometheus remote-write 1.0 (protobuf + snappy)
    through a bounded on-disk queue in DATA_DIR/remote_write; `ks run` starts it only when url is set
    (docs/fleet.md)."""

    url: str = _f("", "receiver URL, e.g. http://prometheus:9090/api/v1/write (Prometheus with "
                      "--web.enable-remote-write-receiver, Mimir, Thanos Receive, VictoriaMetrics); empty: not sent")
    interval_s: float = _f(15.0, "seconds between two collections of every sample")
    hostname: str = _f("", "value of the host label on every series (empty: this machine's hostname)")
    labels: str = _f("", "more labels on every series, as name=value pairs separated by commas, "
                         "e.g. \"dc=eu1,role=db\"")
    queue_max_mb: float = _f(64.0, "bound of the on-disk queue in MiB; past it the oldest batches are dropped "
                                   "(counted)")
    timeout_s: float = _f(10.0, "seconds one HTTP request may take")
    backoff_start_s: float = _f(1.0, "wait after the first failed try; doubles each try")
    backoff_max_s: float = _f(30.0, "longest wait between tries")


@dataclass(frozen=True)
class LLMConfig:
    """`ks agent explain`: the optional LLM narrative, and the bounds of every agent tool call (docs/design.md,
    "LLM narrative"). provider "gemini" (google-genai; on when $GEMINI_API_KEY is set) or "openai": any
    OpenAI-compatible chat-completions endpoint (OpenAI, a local llama.cpp server, Ollama, vLLM; on when
    base_url or the key is set; a local server needs no key)."""

    provider: str = _f("gemini", "gemini | openai (any OpenAI-compatible endpoint)")
    model: str = _f("", "model name (empty: gemini-2.5-flash for gemini; the server's first model for openai)")
    base_url: str = _f("", "API base URL, e.g. http://127.0.0.1:8080/v1 for a local llama.cpp server (empty: the "
                           "provider's public API)")
    api_key_env: str = _f("", "environment variable holding the API key (empty: GEMINI_API_KEY for gemini, "
                              "OPENAI_API_KEY for openai); the key is never read from this file")
    request_timeout_s: float = _f(60.0, "seconds one model request may take")
    deadline_s: float = _f(180.0, "seconds the whole explanation may take")
    max_turns: int = _f(8, "model calls per explanation at most")
    max_tool_result_chars: int = _f(20000, "characters of one tool result sent to the model at most")
    tool_timeout_s: float = _f(0.9, "wall-clock bound of one tool call (the model's and `ks agent tool`'s): "
                                    "the forked child running it is killed past it (0.9: killed and reaped "
                                    "within 1 s)")
    tool_memory_mb: float = _f(100.0, "memory one tool call may add (RLIMIT_AS of its child)")
    audit_file: str = _f("", "where every request sent to the model is appended, exactly as sent, mode 0600 "
                             "(empty: DATA_DIR/llm_audit.jsonl)")


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    remote_write: RemoteWriteConfig = field(default_factory=RemoteWriteConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)


def _sections() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(value: Any, typ: type, where: str) -> Any:
    # TOML has int and float; a float key accepts an int, nothing else converts.
    if typ is float and type(value) in (int, float):
        return float(value)
    if typ is int and type(value) is int:
        return value
    if typ is bool and type(value) is bool:
        return value
    if typ is str and type(value) is str:
        return value
    raise ConfigError(f"{where} must be {typ.__name__}, got {type(value).__name__} {value!r}")


def from_dict(doc: dict, source: str = "<dict>") -> Config:
    """A Config from parsed TOML; unknown sections or keys and wrong types raise ConfigError."""
    sections = _sections()
    unknown = sorted(set(doc) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown section [{unknown[0]}]; known sections: "
                          + ", ".join(f"[{s}]" for s in sections))
    built = {}
    for name, cls in sections.items():
        values = doc.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of keys")
        hints = get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        bad = sorted(set(values) - set(known))
        if bad:
            raise ConfigError(f"{source}: unknown key '{bad[0]}' in [{name}]; known keys: {', '.join(known)}")
        kw = {k: _coerce(v, hints[k], f"{source}: [{name}] {k}") for k, v in values.items()}
        for k, v in kw.items():
            # every number here is a size, a count or a duration: zero or less is a slip
            if type(v) in (int, float) and v <= 0:
                raise ConfigError(f"{source}: [{name}] {k} must be positive, got {v!r}")
        built[name] = cls(**kw)
    return Config(**built)


def config_path(explicit: str | Path | None = None) -> Path | None:
    """The file the config comes from, or None for the defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return SYSTEM_PATH if SYSTEM_PATH.exists() else None


def load(explicit: str | Path | None = None) -> Config:
    """The effective config (see the module doc for where it is read from)."""
    path = config_path(explicit)
    if path is None:
        return Config()
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(doc, str(path))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def to_toml(cfg: Config, key_prefix: str = "", doc_prefix: str = "# ") -> str:
    """The config as TOML, every key with its doc as a comment (key_prefix "# " comments the keys out)."""
    out = []
    for name in _sections():
        sec = getattr(cfg, name)
        out.append(f"[{name}]")
        for f in dataclasses.fields(sec):
            out.append(f"{doc_prefix}{f.metadata.get('doc', '')}")
            out.append(f"{key_prefix}{f.name} = {_toml_value(getattr(sec, f.name))}")
        out.append("")
    return "\n".join(out)


EXAMPLE_HEADER = """\
# /etc/kernelsight/config.toml: KernelSight's config file (installed by `make install`
# if absent).  Every key is shown commented out with its built-in default; uncomment and
# edit what you change.  Reference: docs/config.md; `ks config show` prints the effective
# config; an unknown section or key is an error that names it.
#
# The data dir and the FIFO are not keys here: the service passes them to `ks run`
# (--data-dir /var/lib/kernelsight --fifo /run/kernelsight/kernelsight.fifo).
"""


def example() -> str:
    """deploy/config.toml.example: every section, every key commented out at its default under its doc
    (written by docs/generate.py, so a new key is never missing from it)."""
    return EXAMPLE_HEADER + "\n" + to_toml(Config(), key_prefix="# ", doc_prefix="#   ")


def markdown() -> str:
    """The reference of every section and key, for docs/config.md (docs/generate.py)."""
    out = ["# Configuration", "",
           "One TOML file configures every command. It is read from the first of: the `--config PATH` "
           "option where a command has one, `$KS_CONFIG`, `/etc/kernelsight/config.toml` if it exists; "
           "else the defaults below apply. An unknown section or key is an error. "
           "`python -m kernelsight.config` (or `ks config show`) prints the effective config.", ""]
    for name, cls in _sections().items():
        out.append(f"## [{name}]\n")
        if cls.__doc__:
            out.append(cls.__doc__.strip() + "\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.append(f"| `{f.name}` | {hints[f.name].__name__} | `{_toml_value(f.default)}` | "
                       f"{f.metadata.get('doc', '').replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m kernelsight.config", description="Print the effective config as TOML.")
    p.add_argument("--config", help="config file (default $KS_CONFIG, else /etc/kernelsight/config.toml, else defaults)")
    a = p.parse_args(argv)
    try:
        cfg = load(a.config)
    except ConfigError as e:
        print(f"config: {e}", file=sys.stderr)
        return 2
    src = config_path(a.config)
    print(f"# effective config; source: {src if src else 'built-in defaults'}")
    print(to_toml(cfg), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
