"""``benchmarks/host.py --quick --json`` runs end to end: both paths reported with the agreed keys, no errors.

The figures themselves are not asserted (the machine is shared and noisy); only that the benchmark
ingests a corpus, starts the fake model, the lakehouse and the gateway, runs the two-step turn
directly and through the host, and reports every figure with zero errors. A tiny corpus keeps it short.
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
SCRIPT = REPO / "benchmarks" / "host.py"
TIMEOUT_S = 300
PATH_KEYS = {"turns", "errors", "ttft_p50_ms", "ttft_p95_ms", "total_p50_ms", "total_p95_ms", "search_p50_ms"}
RATIO_KEYS = {"ttft_p50", "ttft_p95", "total_p50", "total_p95"}


def test_quick_json_run_reports_both_paths_without_errors(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "kuendigung.md").write_text(
        "# Kündigungsfristen\n\nDas Arbeitsverhältnis kann mit einer Frist von vier Wochen zum Fünfzehnten oder "
        "zum Ende eines Kalendermonats gekündigt werden.\n", encoding="utf-8")
    (corpus / "solz.md").write_text(
        "# Solidaritätszuschlag\n\nDer Solidaritätszuschlag beträgt 5,5 Prozent der Bemessungsgrundlage.\n",
        encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTOR_")}
    # Own process group: on a timeout the benchmark and the servers it started are killed together.
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--json", "--corpus", str(corpus)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"benchmark ran longer than {TIMEOUT_S} s:\n{err.decode(errors='replace')[-3000:]}")
    stderr = err.decode(errors="replace")[-3000:]
    assert proc.returncode == 0, stderr
    lines = [line for line in out.decode().splitlines() if line.strip()]
    assert len(lines) == 1, (lines, stderr)
    result = json.loads(lines[0])
    assert {"direct", "host", "ratio", "target_ratio", "meets_target", "errors", "turns", "provider",
            "corpus"} <= result.keys()
    assert result["errors"] == 0, (result, stderr)
    for path in ("direct", "host"):
        assert PATH_KEYS <= result[path].keys(), result[path]
        assert result[path]["errors"] == 0 and result[path]["turns"] == result["turns"] == 5, (result[path], stderr)
        assert all(result[path][key] is not None for key in PATH_KEYS)
    assert RATIO_KEYS <= result["ratio"].keys() and all(v is not None for v in result["ratio"].values())
    assert result["target_ratio"] == 1.2 and isinstance(result["meets_target"], bool)
    assert result["corpus"]["documents"] == 2 and result["corpus"]["chunks"] >= 2
