"""The same observation on many hosts is one Alertmanager group.

A real Alertmanager (Debian's) loads deploy/alertmanager/fleet.yml as shipped; alerts
built by ks-alerts' own code (Sender.build) for three hosts (two with Connection
Churning, of different severities, one with Memory Pressure) are POSTed to it as
ks-alerts does; /api/v2/alerts/groups must show one group for Connection Churning
holding both hosts, and another for Memory Pressure.
"""

from __future__ import annotations

import json
import time
import urllib.request

import orjson
import pytest

from conftest import REPO, wait_for
from prom_util import ALERTMANAGER, Stack, free_port, get_json, ready

from kernelsight.alerts import Sender
from kernelsight.config import AlertsConfig

FLEET_YML = REPO / "deploy" / "alertmanager" / "fleet.yml"


def _row(oid: int, label: str, severity: str, now: float) -> tuple:
    return (oid, label, "open", severity, "network", "anomaly", "sustained", now - 30, None, f"{label} here",
            orjson.dumps({"reasoning_hints": ["a hint"]}).decode())


@pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager is not installed (make apt)")
def test_same_label_on_two_hosts_is_one_group(tmp_path):
    st = Stack(tmp_path)
    port = free_port()
    am = f"http://127.0.0.1:{port}"
    try:
        (tmp_path / "am").mkdir()
        st.spawn("alertmanager", [ALERTMANAGER, f"--config.file={FLEET_YML}", f"--storage.path={tmp_path / 'am'}",
                                  f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="])
        wait_for(lambda: ready(f"{am}/-/ready"), 60, 0.2, "alertmanager ready")
        now = time.time()
        alerts = []
        for host, oid, label, sev in (("web-1", 7, "Connection Churning", "medium"),
                                      ("web-2", 3, "Connection Churning", "high"),
                                      ("db-1", 7, "Memory Pressure", "medium")):
            s = Sender(tmp_path / host, AlertsConfig(alertmanager_url=am), host=host, extra_labels={"dc": "eu1"})
            alerts.append(s.build(_row(oid, label, sev, now), now)[1])
        req = urllib.request.Request(f"{am}/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - our own local server
            assert r.status == 200

        def groups():
            g = get_json(f"{am}/api/v2/alerts/groups")
            return g if sum(len(x["alerts"]) for x in g) == 3 else None

        got = wait_for(groups, 30, 0.2, "alerts grouped")
        by_label = {g["labels"]["label"]: g for g in got}
        assert set(by_label) == {"Connection Churning", "Memory Pressure"}
        churn = by_label["Connection Churning"]
        assert churn["labels"] == {"alertname": "ConnectionChurning", "label": "Connection Churning"}
        assert sorted(a["labels"]["host"] for a in churn["alerts"]) == ["web-1", "web-2"]
        assert all(a["labels"]["dc"] == "eu1" for a in churn["alerts"])
        assert [a["labels"]["host"] for a in by_label["Memory Pressure"]["alerts"]] == ["db-1"]
    finally:
        st.stop()
