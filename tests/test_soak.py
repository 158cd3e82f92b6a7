"""A short kill soak through the real pipeline (`make soak` runs the full one):
synthetic producers plus every real stage, one stage SIGKILLed at random every
few seconds; at the end every line written is stored, rejected or counted as
dropped.  What the kernel schedules varies; what must hold is the accounting."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from bench.soak import run_soak  # noqa: E402


@pytest.mark.slow
@pytest.mark.bpf
def test_short_kill_soak_leaves_nothing_unaccounted():
    r = run_soak(seconds=40, rate_per_s=10_000, kill_every_s=8, producers=2, seed=7)
    print(f"\nkills: {r.kills}\nwritten {r.written}, stored {r.stored}, dropped {r.dropped}, "
          f"unaccounted {r.unaccounted}")
    for p in r.producers:
        print(p)
    assert len(r.kills) >= 4
    assert {p["producer"] for p in r.producers} >= {"ks-soak", "ks-scraper"}
    assert all(p["unaccounted"] == 0 for p in r.producers), [p for p in r.producers if p["unaccounted"]]
    assert r.unaccounted == 0
