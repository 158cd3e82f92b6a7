"""Keep README true: regenerate its generated sections.

    python -m kernelsight.docs           # rewrite README.md in place
    python -m kernelsight.docs --check   # exit 1 if README is out of date

Sections live between `<!-- BEGIN name -->` and `<!-- END name -->`:
  schema  the event and table reference, from schema/events/*.json
  bench   the benchmark table, from bench/results.json
  scenarios  the fault-injection table, from bench/scenarios.json
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson

from .schema import markdown


def bench_table(results_path: Path) -> str:
    try:
        rows = orjson.loads(results_path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return "No benchmark results yet: run `make bench`."
    out = ["| benchmark | value | unit | ratio | date | how |", "|---|---:|---|---:|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if isinstance(r.get("ratio"), (int, float)) else "-"
        v = r["value"]
        value = f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"
        out.append(f"| `{r['name']}` | {value} | {r['unit']} | {ratio} | {r['date']} | "
                   f"{r.get('notes', '').replace('|', '/')} |")
    return "\n".join(out)


def scenario_table(path: Path) -> str:
    try:
        d = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return "No scenario results yet: run `make scenarios`."
    verdict = "every scenario detected and cleared, no high/critical false positives" if d.get("ok") else \
        "NOT all passed: see bench/scenarios.json"
    return (f"Run of {d['date']} ({d.get('mode', 'full')}, {d.get('duration_s', 0):.0f} s, kernel "
            f"{d.get('host', {}).get('kernel', '?')}): {verdict}.\n\n{d['table']}")


def sections(repo: Path) -> dict[str, str]:
    return {"schema": markdown(), "bench": bench_table(repo / "bench" / "results.json"),
            "scenarios": scenario_table(repo / "bench" / "scenarios.json")}


def render(text: str, secs: dict[str, str]) -> str:
    for name, body in secs.items():
        pat = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"README has no {name} section markers")
        text = pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    repo = Path.cwd()
    readme = repo / "README.md"
    old = readme.read_text()
    new = render(old, sections(repo))
    if "--check" in argv:
        if new != old:
            print("README.md is out of date: run `python -m kernelsight.docs`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
