"""Why a tool did not attach, in words, from what it and libbpf printed."""

from __future__ import annotations

import os
import re

_KPROBE = re.compile(r"(?:failed to (?:add legacy kprobe event|create kprobe) for '([^'+]+)|kprobe '([^'+]+))")
_CORE = re.compile(r"failed to resolve CO-RE relocation .*?\b(?:struct|union) ([\w.]+)")
_ATTACH_TARGET = re.compile(r"failed to (?:set attach target|find kernel BTF type ID of '?)\s*(?:for )?'?([\w.]+)")
_PROG = re.compile(r"prog '([^']+)': BPF program load failed: Operation not permitted")


def kernel_has_kprobes() -> bool:
    return os.path.exists("/sys/kernel/tracing/kprobe_events") or os.path.exists(
        "/sys/kernel/debug/tracing/kprobe_events")


def classify(stderr: str, returncode: int | None) -> tuple[str, bool]:
    """(reason, permanent).  Permanent failures will not go away by restarting."""
    s = stderr
    m = _KPROBE.search(s)
    if m:
        sym = m.group(1) or m.group(2)
        if not kernel_has_kprobes():
            return f"needs kprobes ({sym}); this kernel has none (CONFIG_KPROBES off)", True
        return f"kprobe on {sym} could not be created (function missing or not traceable)", True
    if "BPF program load failed: Operation not permitted" in s or "failed to load BPF object: -1" in s:
        p = _PROG.search(s)
        where = f" ({p.group(1)})" if p else ""
        return (f"fentry/fexit program{where} refused by the kernel (EPERM: lockdown forbids BPF "
                "tracing programs) and the tool has no tracepoint fallback"), True
    m = _CORE.search(s)
    if m:
        return (f"tool was built for another kernel layout: CO-RE relocation of {m.group(1)} failed "
                "on this kernel"), True
    m = _ATTACH_TARGET.search(s)
    if m:
        return f"attach target {m.group(1)} does not exist in this kernel's BTF", True
    if "vmlinux BTF" in s or ("/sys/kernel/btf/vmlinux" in s and "No such file" in s):
        return "kernel BTF (/sys/kernel/btf/vmlinux) missing; CO-RE tools need it", True
    if "failed to increase rlimit" in s or ("Operation not permitted" in s and os.geteuid() != 0):
        return "needs root (CAP_BPF and CAP_PERFMON)", True
    if "tracefs" in s.lower() and "not mounted" in s.lower():
        return "tracefs is not mounted at /sys/kernel/tracing", True
    last = [ln.strip() for ln in s.splitlines() if ln.strip()]
    tail = last[-1][:200] if last else "no error output"
    if returncode is None:
        return f"did not start tracing in time ({tail})", False
    if returncode < 0:
        return f"killed by signal {-returncode} ({tail})", False
    return f"exited with code {returncode}: {tail}", False
