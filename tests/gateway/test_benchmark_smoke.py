"""``benchmarks/gateway.py --quick --json`` runs end to end: every configuration reported, no failed call.

The figures themselves are not asserted (the machine is shared and noisy); only that the benchmark
starts its servers, calls the echo tool directly, through the FastMCP proxy and through the gateway
with both clients, reports each configuration with the agreed keys, and counts zero errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gateway.py"
TIMEOUT_S = 90
KEYS = {"label", "client", "concurrency", "p50_ms", "p95_ms", "p99_ms", "calls_per_s", "errors"}


def test_quick_json_run_reports_every_configuration_without_errors() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTOR_")}
    # Own process group: on a timeout the benchmark and the servers it started are killed together.
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--json"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"benchmark ran longer than {TIMEOUT_S} s:\n{err.decode(errors='replace')[-3000:]}")
    stderr = err.decode(errors="replace")[-3000:]
    assert proc.returncode == 0, stderr
    rows = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert rows, stderr
    for row in rows:
        assert KEYS <= row.keys(), row
        assert row["errors"] == 0, (row, stderr)
        assert row["label"] in ("direct", "fastmcp", "gateway") and row["client"] in ("raw", "sdk"), row
    configurations = {(r["label"], r["client"], r["concurrency"]) for r in rows}
    assert len(configurations) == len(rows)  # one line per configuration
    assert {(label, client) for label, client, _ in configurations} == {
        (label, client) for label in ("direct", "fastmcp", "gateway") for client in ("raw", "sdk")}
