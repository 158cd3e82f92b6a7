"""Feature matrix exports: CSV, NumPy .npz, JSON and Parquet.

- csv: header `ts,time,<feature>...`; ts in epoch ns, time ISO-8601 UTC, empty cell = null.
- npz: X (n x f float64, NaN = null), ts (int64 ns), names (str); np.load(path)["X"].
- json: {"metadata": {...}, "features": [catalog rows + per-feature statistics],
  "ts": [...], "rows": [[value or null, ...], ...]} (rows in the order of "names").
- parquet: one column ts (int64 ns) plus one float64 column per feature, written with pyarrow.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import orjson

from . import catalog as C
from .baseline import column_stats
from .engine import FeatureMatrix
from .timeparse import iso

FORMATS = ("csv", "npz", "json", "parquet")


def export(m: FeatureMatrix, fmt: str, out: Path, meta: dict | None = None) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    {"csv": _csv, "npz": _npz, "json": _json, "parquet": _parquet}[fmt](m, out, meta or {})
    return out


def _csv(m: FeatureMatrix, out: Path, meta: dict) -> None:
    df = m.frame().reset_index()
    df.insert(1, "time", [iso(int(t)) for t in m.ts])
    df.to_csv(out, index=False, float_format="%.17g", na_rep="")


def _npz(m: FeatureMatrix, out: Path, meta: dict) -> None:
    # np.savez appends .npz when missing; write to the exact path given
    with open(out, "wb") as f:
        np.savez_compressed(f, X=m.values, ts=m.ts.astype(np.int64), names=np.array(m.names, dtype=str),
                            window_s=np.float64(m.window_s))


def _json(m: FeatureMatrix, out: Path, meta: dict) -> None:
    feats = []
    for j, n in enumerate(m.names):
        f = C.BY_NAME.get(n)
        row = {"name": n}
        if f:
            row.update(group=f.group, unit=f.unit, description=f.description)
        st = column_stats(m.values[:, j])
        st["null"] = int(np.isnan(m.values[:, j]).sum())
        reasons = [r for r in m.reasons[j] if r is not None]
        if reasons:
            uniq, cnt = np.unique(np.array(reasons, dtype=str), return_counts=True)
            row["null_reasons"] = {str(u): int(c) for u, c in zip(uniq, cnt)}
        row["stats"] = st
        feats.append(row)
    rows = [[None if math.isnan(v) else v for v in r] for r in m.values.tolist()]
    doc = {
        "metadata": {"format": "kernelsight-features", "version": 1, "exported_ts": time.time_ns(),
                     "window_s": m.window_s, "vectors": len(m), "names": m.names,
                     "since": iso(int(m.ts.min())) if len(m) else None, "until": iso(int(m.ts.max())) if len(m) else None,
                     **meta},
        "features": feats,
        "ts": m.ts.tolist(),
        "rows": rows,
    }
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def _parquet(m: FeatureMatrix, out: Path, meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"ts": pa.array(m.ts, type=pa.int64())}
    for j, n in enumerate(m.names):
        cols[n] = pa.array(m.values[:, j], type=pa.float64(), from_pandas=True)
    table = pa.table(cols)
    md = {b"kernelsight": orjson.dumps({"window_s": m.window_s, **meta})}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **md})
    pq.write_table(table, out)
