"""Which collectors can run on this kernel: installed, and attaching on a short trial.

Every trial starts the tool and waits for its first stdout line (the tools
print their banner or header only after attaching) or for it to exit; the
exit text is mapped to a reason in words.  Trials run in parallel threads, so
the whole probe takes about as long as the slowest tool to load (1-3 s here),
bounded by timeout_s.  Results are cached in $KS_DATA_DIR/collectors_probe.json
and reused while the boot id, kernel release and tool binaries are unchanged.
"""

from __future__ import annotations

import os
import platform
import selectors
import shutil
import signal
import subprocess
import time

import orjson

from .base import CollectorSpec, find_tool
from .reasons import classify
from .registry import COLLECTORS, EXTRA_TOOLS

CACHE_NAME = "collectors_probe.json"
CACHE_VERSION = 1


def trial(tool: str, args: list[str], timeout_s: float = 8.0) -> dict:
    """Start `tool args`; available when it prints a line before exiting."""
    path = find_tool(tool)
    if path is None:
        return {"available": False, "reason": f"{tool} is not installed (apt-get install libbpf-tools)",
                "seconds": 0.0}
    stdbuf = shutil.which("stdbuf")
    argv = ([stdbuf, "-oL", "-eL"] if stdbuf else []) + [path, *args]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True, close_fds=True)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ, "out")
    sel.register(p.stderr, selectors.EVENT_READ, "err")
    err = b""
    got_line = False
    open_streams = 2
    deadline = t0 + timeout_s
    try:
        while open_streams and not got_line:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(timeout=min(left, 0.2)):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                elif key.data == "out":
                    got_line = got_line or b"\n" in chunk
                else:
                    err = (err + chunk)[-32768:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        sel.close()
        p.stdout.close()
        p.stderr.close()
    secs = round(time.monotonic() - t0, 2)
    if got_line:
        return {"available": True, "reason": "attached", "seconds": secs}
    rc = p.returncode if open_streams == 0 else None
    reason, _ = classify(err.decode("utf-8", "replace"), rc)
    return {"available": False, "reason": reason, "seconds": secs}


def _probe_spec(spec: CollectorSpec, timeout_s: float) -> dict:
    r = trial(spec.tool, spec.args(1), timeout_s)
    out = {"name": spec.name, "tool": spec.tool, "available": r["available"], "reason": r["reason"],
           "attach": spec.attach if r["available"] else None, "seconds": r["seconds"]}
    fb = spec.fallback
    if not r["available"] and fb is not None:
        why = fb.check() if fb.check else None
        if why is None:
            out.update(available=True, tool=fb.tool, attach=fb.attach,
                       reason=f"{spec.tool} {r['reason']}; using {fb.attach} instead")
        else:
            out["reason"] = f"{r['reason']}; fallback {fb.tool} unusable: {why}"
    return out


def _fingerprint(tools: list[str]) -> dict:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except OSError:
        boot_id = ""
    mt = {}
    for t in tools:
        p = find_tool(t)
        mt[t] = os.stat(p).st_mtime_ns if p else None
    return {"version": CACHE_VERSION, "boot_id": boot_id, "kernel": platform.release(),
            "euid": os.geteuid(), "tools": mt}


def probe_all(timeout_s: float = 10.0, data_dir: str | None = None, use_cache: bool = True,
              include_extra: bool = False) -> list[dict]:
    """[{name, tool, available, reason, attach}] for every collector (and, with
    include_extra, every other known libbpf-tool, with kind "extra")."""
    data_dir = data_dir if data_dir is not None else os.environ.get("KS_DATA_DIR")
    specs = list(COLLECTORS.values())
    tools = [s.tool for s in specs] + (list(EXTRA_TOOLS) if include_extra else [])
    fp = _fingerprint(tools)
    cache = os.path.join(data_dir, CACHE_NAME) if data_dir else None
    if cache and use_cache:
        try:
            with open(cache, "rb") as f:
                saved = orjson.loads(f.read())
            if saved.get("fingerprint") == fp:
                return saved["results"]
        except (OSError, ValueError):
            pass
    from concurrent.futures import ThreadPoolExecutor  # here: the runner process need not load it

    # Each trial waits at most timeout_s - 1 so the whole probe fits in timeout_s.
    per = max(1.0, timeout_s - 1.0)
    with ThreadPoolExecutor(max_workers=len(tools)) as ex:
        futs = [ex.submit(_probe_spec, s, per) for s in specs]
        extra = {t: ex.submit(trial, t, a, per) for t, a in EXTRA_TOOLS.items()} if include_extra else {}
        results = [f.result() for f in futs]
        for t, f in extra.items():
            r = f.result()
            results.append({"name": t, "tool": t, "kind": "extra", "available": r["available"],
                            "reason": r["reason"], "attach": None, "seconds": r["seconds"]})
    for r in results:
        r.setdefault("kind", "collector")
    if cache:
        try:
            os.makedirs(data_dir, exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(orjson.dumps({"fingerprint": fp, "results": results}, option=orjson.OPT_INDENT_2))
            os.replace(tmp, cache)
        except OSError:
            pass
    return results
