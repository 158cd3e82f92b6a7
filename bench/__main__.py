"""`python -m bench [NAME ...]`: run benchmarks, print a table, write bench/results.json.

Each module here exposes run() -> list of {name, value, unit, ratio, notes}.
Results are merged into results.json by name, so running one benchmark keeps
the others' last figures (each row carries its own date).
"""

from __future__ import annotations

import datetime
import importlib
import sys
from pathlib import Path

import orjson

BENCHES = ["ingest", "tracers", "features", "storage", "overhead"]


def main(argv: list[str]) -> int:
    names = argv or BENCHES
    out_path = Path.cwd() / "bench" / "results.json"
    try:
        results = {r["name"]: r for r in orjson.loads(out_path.read_bytes())}
    except (OSError, orjson.JSONDecodeError):
        results = {}
    today = datetime.date.today().isoformat()
    failed = 0
    for name in names:
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            print(f"[bench] {name}: not present in this build, skipped", file=sys.stderr)
            continue
        print(f"[bench] running {name} ...", file=sys.stderr)
        try:
            rows = mod.run()
        except Exception as e:  # a broken bench must not hide the others' figures
            print(f"[bench] {name} failed: {e!r}", file=sys.stderr)
            failed += 1
            continue
        for r in rows:
            r.setdefault("ratio", None)
            r.setdefault("notes", "")
            r["date"] = today
            results[r["name"]] = r
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_bytes(orjson.dumps(list(results.values()), option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\n{'benchmark':<44} {'value':>14} {'unit':<10} {'ratio':>7}  date")
    for r in results.values():
        ratio = f"{r['ratio']:.2f}" if isinstance(r.get("ratio"), (int, float)) else "-"
        print(f"{r['name']:<44} {r['value']:>14,.1f} {r['unit']:<10} {ratio:>7}  {r['date']}")
    print(f"\nwritten to {out_path}; `python docs/generate.py` renders it into docs/benchmarks.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
