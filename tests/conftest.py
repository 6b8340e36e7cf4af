"""Shared fixtures: the repository root, a params writer and a temporary project copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mldiff import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests' tensors are small: on the shared 2-core CI box, waiting for torch's threads
    costs more than they gain (tools run in subprocesses choose their own threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def write_params(tmp_path):
    """Write the default params overridden like a preset (depth 2); return the path."""

    def write(override: dict | None = None, name: str = "params.yaml") -> Path:
        raw = config.deep_merge(config.Params().model_dump(mode="json"), override or {}, depth=2)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


@pytest.fixture
def project(tmp_path):
    """A committed git copy of the repository (tracked files) with the tiny preset active."""
    dest = tmp_path / "project"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([sys.executable, "-m", "mldiff.cli", "preset", "tiny"], cwd=dest, check=True,
                   capture_output=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny study"], cwd=dest, check=True)
    return dest
