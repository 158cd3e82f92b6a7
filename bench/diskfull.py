"""Disk full: the whole pipeline with its data dir on a 64 MB tmpfs that a filler
file has nearly filled.  It must run into the full disk without a crash loop,
lose no count, say so in `ks status`, and resume by itself once the filler goes.

    python -m bench diskfull        (root: mounts a tmpfs)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

FS_MB = 64
HEADROOM_MB = 3        # what the filler leaves free: minutes of data at the pipeline's rate
PRODUCER_RATE = 5000   # a synthetic producer's lines/s, so the disk fills in seconds, not hours


def _status(ks: Path, data_dir: Path, env: dict) -> dict:
    out = subprocess.run([str(ks), "status", "--json", "--data-dir", str(data_dir)], env=env,
                         capture_output=True, text=True, timeout=60)
    return orjson.loads(out.stdout) if out.returncode == 0 else {}


def _wait(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(1)
    return False


def run_diskfull(log=print) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="ks-diskfull-"))
    mnt = tmp / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m,mode=0700", "tmpfs", str(mnt)], check=True)
    data_dir, fifo = mnt / "data", str(tmp / "fifo")
    from bench.soak import _schema_dir, stop_pipeline  # the soak producer's lines need the soak event type

    env = {**os.environ, "KS_DATA_DIR": str(data_dir), "KS_FIFO": fifo, "KS_SCHEMA_DIR": str(_schema_dir(tmp))}
    ks = Path(sys.executable).with_name("ks")
    filler = mnt / "filler"
    res: dict = {}
    sup = prod = None
    try:
        with open(tmp / "supervisor.log", "wb") as sup_log:
            sup = subprocess.Popen([str(ks), "run", "--data-dir", str(data_dir), "--fifo", fifo], env=env,
                                   stdout=subprocess.DEVNULL, stderr=sup_log, start_new_session=True)
        assert _wait(lambda: (data_dir / "kernelsight.db").exists(), 60), "pipeline did not start"
        free_mb = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize / 2**20
        with open(filler, "wb") as f:
            f.write(b"\0" * int((free_mb - HEADROOM_MB) * 2**20))
        log(f"diskfull: {FS_MB} MB tmpfs, filler leaves {HEADROOM_MB} MB")
        repo = Path(__file__).resolve().parents[1]
        prod = subprocess.Popen([sys.executable, str(repo / "bench" / "soak_producer.py"), fifo, str(PRODUCER_RATE)],
                                env=env, stdout=subprocess.PIPE)
        t0 = time.monotonic()
        full = _wait(lambda: (_status(ks, data_dir, env).get("ingest") or {}).get("disk_full"), 120)
        res["seconds_to_full"] = round(time.monotonic() - t0, 1)
        st = _status(ks, data_dir, env)
        res["status_when_full"] = (st.get("ingest") or {}).get("summary")
        time.sleep(20)  # stay full a while: no crash loop may start
        st = _status(ks, data_dir, env)
        res["restarts_while_full"] = {c["name"]: c["restarts"] for c in st.get("children", []) if c["restarts"]}
        filler.unlink()
        t1 = time.monotonic()
        resumed = _wait(lambda: not (_status(ks, data_dir, env).get("ingest") or {}).get("disk_full"), 120)
        res["seconds_to_resume"] = round(time.monotonic() - t1, 1) if resumed else None
        prod.send_signal(signal.SIGTERM)
        final = orjson.loads(prod.communicate(timeout=60)[0])
        res["producer"] = final
        time.sleep(5)
    finally:
        if prod is not None and prod.poll() is None:
            prod.kill()
            prod.wait()
        if sup is not None:
            stop_pipeline(sup)
    st = _status(ks, data_dir, env)
    res["full"] = bool(full)
    res["accounting"] = [{k: p[k] for k in ("producer", "written", "stored", "rejected", "dropped_total",
                                             "unaccounted")} for p in (st.get("accounting") or {}).get("producers", [])]
    res["unaccounted"] = sum(abs(p["unaccounted"]) for p in res["accounting"])
    import shutil

    shutil.copytree(data_dir / "logs", tmp / "logs", dirs_exist_ok=True)  # kept for a look after the run
    res["logs"] = str(tmp / "logs")
    subprocess.run(["umount", str(mnt)], check=False)
    return res


def run() -> list[dict]:
    r = run_diskfull(log=lambda m: print(m, file=sys.stderr))
    print(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode(), file=sys.stderr)
    return [{"name": "diskfull_unaccounted_events", "value": r["unaccounted"], "unit": "lines", "ratio": None,
             "notes": f"whole pipeline on a {FS_MB} MB tmpfs nearly filled by a filler, plus a producer at "
                      f"{PRODUCER_RATE}/s: full after {r['seconds_to_full']} s (`ks status`: {r['status_when_full']!r}); "
                      f"restarts while full {r['restarts_while_full'] or 'none'}; filler removed -> storing again "
                      f"after {r['seconds_to_resume']} s; every producer written = stored + rejected + counted "
                      f"drops, unaccounted {r['unaccounted']}"}]
