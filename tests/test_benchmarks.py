"""The GPU readiness script runs end to end as a tiny CPU dry run and prints its one table."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parent / "benchmarks" / "gpu_check.sh"


def test_gpu_check_dry_run_prints_the_table():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # never the real GPU run, even on one
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| grid | sampling s | samples/s |")
    assert [r.split("|")[1].strip() for r in rows[1:]] == [
        "32²", "48²", "solver: 2 × 32² FitzHugh–Nagumo to t = 5"]
    for row in rows[1:]:  # every timing is a positive number
        assert float(row.split("|")[2]) > 0
