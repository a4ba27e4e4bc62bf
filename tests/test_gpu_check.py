"""The prepared GPU check runs every step here, on CPU at toy sizes, so a broken step is found
before a GPU is lent (benchmarks/gpu/run.sh --dry-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("gpu-tests", "parity", "rasterizer", "stage1", "stage2", "equivariance", "gmae",
         "feedforward", "inference")


def test_dry_run_runs_every_step_and_writes_the_figures(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), str(tmp_path / "out"),
                           "--dry-run"], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    figures = json.loads((tmp_path / "out" / "figures.json").read_text())
    assert list(figures) == list(STEPS)
    assert all(step["status"] == "ok" for step in figures.values()), figures
    for name in STEPS[1:]:
        record = figures[name]["figures"]
        assert record["dry_run"] and record["step"] == name
        assert f"== {name}: ok in" in proc.stdout  # each step's time is printed
    parity = figures["parity"]["figures"]
    assert parity["passed"] and len(parity["rows"]) == 2
    assert {"rgb", "alpha", "features", "grad.means", "grad.features"} <= set(parity["rows"][0])
    stage2 = figures["stage2"]["figures"]
    assert stage2["step_ms"] > 0 and stage2["projected_epoch_h"] > 0
    assert figures["inference"]["figures"]["rows"][0]["ratio"] > 0


def test_a_failing_step_does_not_stop_the_others(tmp_path):
    """A step that fails is recorded and the run goes on (exit 1 at the end)."""
    broken = tmp_path / "python"
    # a python for which every step fails at once; it still writes the summary (stdin)
    broken.write_text(f'#!/bin/sh\ncase "$1" in -) exec "{sys.executable}" "$@";; esac\n'
                      'exit 3\n')
    broken.chmod(0o755)
    env = {**os.environ, "PYTHON": str(broken)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), str(tmp_path / "out"),
                           "--dry-run"], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 1
    figures = json.loads((tmp_path / "out" / "figures.json").read_text())
    assert list(figures) == list(STEPS)
    assert all(figures[s]["status"] == "failed(rc=3)" for s in STEPS)
    assert f"steps not ok: {len(STEPS)}" in proc.stdout
