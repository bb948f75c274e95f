"""Running the pinned MCP conformance suite's server scenarios against a Streamable HTTP URL.

The suite (``@modelcontextprotocol/conformance``, version pinned in ``package.json``/``package-lock.json``)
is installed by ``npm ci`` into ``tests/conformance/node_modules`` (``make test`` does that); this module
only ever runs that local copy (``node_modules/.bin/conformance``), never ``npx`` downloads.

Verdicts come from the ``checks.json`` files the CLI writes with ``-o DIR`` (one per scenario). A scenario
passes when it reported at least one check and none is ``FAILURE`` or ``WARNING`` - the rule the CLI
itself applies to an ``--expected-failures`` baseline (a warning-only scenario counts as failed there,
although a plain single-scenario run exits 0 on warnings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PACKAGE = "@modelcontextprotocol/conformance"
CLI = HERE / "node_modules" / ".bin" / "conformance"
EXPECTED_FAILURES_FILE = HERE / "expected_failures.json"

DEFAULT_TIMEOUT_S = 75.0  # for the whole call; all 32 scenarios take about 3 s against a healthy server

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RESULT_DIR = re.compile(r"^server-(?P<name>.+)-(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z)$")


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    passed: bool
    detail: str
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    checks: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    duration_s: float = 0.0


class ConformanceNotInstalled(RuntimeError):
    pass


def cli_path() -> Path:
    """The installed CLI, or ``ConformanceNotInstalled`` saying how to install it (never downloads)."""
    if shutil.which("node") is None:
        raise ConformanceNotInstalled("node is not on PATH; the MCP conformance suite needs Node.js >= 20")
    if not CLI.exists():
        raise ConformanceNotInstalled(
            f"{PACKAGE} is not installed: run `make test` or `cd {HERE} && npm ci --no-audit --no-fund`")
    return CLI


def installed_version() -> str:
    return json.loads((HERE / "node_modules" / PACKAGE / "package.json").read_text())["version"]


def list_server_scenarios() -> list[str]:
    """Every server scenario of the pinned suite (``conformance list --server``: active and pending ones)."""
    returncode, output = _call([str(cli_path()), "list", "--server"], time.monotonic() + 60)
    names = re.findall(r"^\s+-\s+(\S+)\s*$", output, re.MULTILINE)
    if returncode != 0 or not names:
        raise RuntimeError(f"`conformance list --server` failed (exit {returncode}):\n{output[-2000:]}")
    return names


def load_expected_failures(path: Path = EXPECTED_FAILURES_FILE) -> dict[str, str]:
    """Scenario name -> why it is expected to fail directly against our fixture server."""
    return dict(json.loads(path.read_text())["expected_failures"])


def run_scenarios(url: str, scenarios: list[str] | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                  workers: int | None = None) -> dict[str, ScenarioResult]:
    """Run server scenarios (default: all, pending ones included) against ``url``, within ``timeout_s`` overall.

    The full list runs in one CLI process (``--suite all``; the suite runs them one after another, about
    3 s in all) because Node start-up costs about a second of CPU per process. A subset - and any scenario
    the full run did not report, e.g. because it crashed the CLI - runs one process per scenario,
    ``workers`` (default: CPU count) at a time. That is safe: every scenario opens its own MCP session(s),
    and the only server-side state the suite touches (log level, subscriptions) is per session.
    A scenario with no result when the time is up fails.
    """
    cli = cli_path()
    deadline = time.monotonic() + timeout_s
    everything = list_server_scenarios()
    names = everything if scenarios is None else list(dict.fromkeys(scenarios))
    unknown = sorted(set(names) - set(everything))
    if unknown:
        raise ValueError(f"unknown server scenarios: {unknown}")
    results: dict[str, ScenarioResult] = {}
    batch_note = ""
    with tempfile.TemporaryDirectory(prefix="mcp-conformance-") as tmp:
        if len(names) > 1 and set(names) == set(everything):
            results, batch_note = _run_batch(cli, url, Path(tmp) / "all", deadline)
        todo = [name for name in names if name not in results]
        if todo and deadline - time.monotonic() > 1:
            size = max(1, min(workers or os.cpu_count() or 2, len(todo)))
            with ThreadPoolExecutor(max_workers=size) as pool:
                futures = [pool.submit(_run_one, cli, url, name, Path(tmp) / f"one-{i:02d}", deadline)
                           for i, name in enumerate(todo)]
                results.update((f.result().name, f.result()) for f in futures)
    for name in names:
        if name not in results:
            results[name] = ScenarioResult(name, False, f"no result within {timeout_s:.0f} s\n{batch_note}".strip())
    return {name: results[name] for name in names}


def _run_batch(cli: Path, url: str, out_dir: Path, deadline: float) -> tuple[dict[str, ScenarioResult], str]:
    out_dir.mkdir(parents=True)
    returncode, output = _call([str(cli), "server", "--url", url, "--suite", "all", "-o", str(out_dir)], deadline)
    ended = datetime.now(UTC)
    runs = sorted((m["ts"], m["name"], d) for d in out_dir.iterdir()
                  if (m := _RESULT_DIR.match(d.name)) and (d / "checks.json").exists())
    results: dict[str, ScenarioResult] = {}
    for i, (ts, name, d) in enumerate(runs):
        next_start = _timestamp(runs[i + 1][0]) if i + 1 < len(runs) else ended
        checks = tuple(json.loads((d / "checks.json").read_text()))
        results[name] = _verdict(name, None, checks, (next_start - _timestamp(ts)).total_seconds())
    status = "timed out" if returncode is None else f"exit {returncode}"
    return results, f"full-suite run {status}; output tail:\n{output[-1500:]}"


def _run_one(cli: Path, url: str, name: str, out_dir: Path, deadline: float) -> ScenarioResult:
    out_dir.mkdir(parents=True)
    started = time.monotonic()
    returncode, output = _call([str(cli), "server", "--url", url, "--scenario", name, "-o", str(out_dir)], deadline)
    duration = time.monotonic() - started
    files = sorted(out_dir.glob("*/checks.json"))
    if returncode is None or not files:
        status = "timed out" if returncode is None else f"exit {returncode}, no checks.json written"
        return ScenarioResult(name, False, f"{status}\n{output[-1500:]}", duration_s=duration)
    return _verdict(name, returncode, tuple(json.loads(files[-1].read_text())), duration)


def _verdict(name: str, returncode: int | None, checks: tuple[dict[str, Any], ...],
             duration_s: float) -> ScenarioResult:
    failures = tuple(_describe(c) for c in checks if c.get("status") == "FAILURE")
    warnings = tuple(_describe(c) for c in checks if c.get("status") == "WARNING")
    passed = returncode in (None, 0) and bool(checks) and not failures and not warnings
    counts = {s: sum(c.get("status") == s for c in checks) for s in ("SUCCESS", "FAILURE", "WARNING", "INFO")}
    detail = ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v) or "no checks reported"
    if returncode:
        detail = f"exit {returncode}; {detail}"
    detail += "".join(f"\n  {line}" for line in failures + warnings)
    return ScenarioResult(name, passed, detail, failures, warnings, checks, duration_s)


def _describe(check: dict[str, Any]) -> str:
    return f"{check.get('status')} {check.get('id')}: {check.get('errorMessage') or check.get('description', '')}"


def _timestamp(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H-%M-%S-%fZ").replace(tzinfo=UTC)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "NODE_PATH")}
    env.update({"NO_COLOR": "1", "FORCE_COLOR": "0"})
    return env


def _call(cmd: list[str], deadline: float) -> tuple[int | None, str]:
    """Run ``cmd`` in this folder until ``deadline``; (exit code or None on timeout, stdout+stderr sans colours)."""
    try:
        proc = subprocess.run(cmd, cwd=HERE, env=_env(), capture_output=True, text=True,
                              timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        return None, _ANSI.sub("", _text(exc.stdout) + _text(exc.stderr))
    return proc.returncode, _ANSI.sub("", proc.stdout + proc.stderr)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def summary(results: dict[str, ScenarioResult]) -> str:
    return "\n".join(f"{'PASS' if r.passed else 'FAIL'} {r.name} ({r.duration_s:.2f} s): {r.detail}"
                     for r in results.values())


if __name__ == "__main__":  # python tests/conformance/runner.py URL [SCENARIO ...]
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: runner.py URL [SCENARIO ...]")
    started = time.monotonic()
    res = run_scenarios(sys.argv[1], sys.argv[2:] or None)
    print(summary(res))
    print(f"{sum(r.passed for r in res.values())}/{len(res)} passed in {time.monotonic() - started:.1f} s")
    raise SystemExit(0 if all(r.passed for r in res.values()) else 1)
