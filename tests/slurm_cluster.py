"""A throwaway single-node SLURM cluster (Debian's slurm-wlm 22.05 and munge) for end-to-end tests.

Everything it needs (munge key and socket, slurm.conf, gres.conf, state, spool, logs) lives in one
fresh temporary directory; the daemons run in the foreground as children of the test process, as
root, talk over 127.0.0.1 on free ports, and are stopped by their process ids. Client commands
find the cluster through ``SLURM_CONF`` in :attr:`Cluster.env`.

The node declares ``gpus`` fake GPUs (GRES ``gpu`` backed by symlinks to /dev/null) so that jobs
asking for ``--gpus`` are scheduled and the request is recorded in the job; nothing enforces it
(``task/none``). CPUs and memory are declared, not detected (``SlurmdParameters=config_overrides``),
so jobs sized for a real cluster node still fit on a small test machine.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = (
    "mungekey", "munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo",
)


def missing_binaries() -> list[str]:
    """The daemons and client commands that are not on PATH (an empty list: all there)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in BINARIES if shutil.which(name, path=search) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running cluster: its directory, node name, client environment and daemon processes."""

    root: Path
    node: str
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str) -> str:
        """Run a SLURM client command against this cluster; return its stdout."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (``MinJobAge``), as ``scontrol show job`` fields."""
        out = self.run("scontrol", "show", "job", "--oneliner")
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of every daemon log (for failure messages)."""
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        """Cancel remaining jobs, stop the daemons (newest first) by pid, delete the directory."""
        if len(self.processes) > 1 and all(p.poll() is None for p in self.processes):
            try:  # slurmctld is up: cancel what is left
                ids = subprocess.run(["squeue", "--noheader", "--format=%i"], env=self.env,
                                     capture_output=True, text=True, timeout=30).stdout.split()
                if ids:
                    subprocess.run(["scancel", *ids], env=self.env, capture_output=True,
                                   timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.processes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _start(self, *cmd: str, log: str) -> None:
        with open(self.root / log, "ab") as out:
            self.processes.append(subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
            ))

    def _wait_idle(self, timeout: float) -> None:
        deadline, state = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while starting:\n{self.log_tail()}")
            state = subprocess.run(
                ["sinfo", "--noheader", "--Node", "--format=%T"],
                env=self.env, capture_output=True, text=True, timeout=30,
            ).stdout.split()
            if state and all(s == "idle" for s in state):
                return
            time.sleep(0.3)
        raise RuntimeError(f"node not idle after {timeout} s (sinfo: {state}):\n{self.log_tail()}")


def _slurm_conf(root: Path, node: str, partitions: Sequence[str], cpus: int, memory_mb: int,
                gpus: int) -> str:
    lines = [
        "ClusterName=mldifftest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge.socket",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "MailProg=/bin/true",
        "DefMemPerCPU=1000",
        # Finished jobs stay visible to squeue/scontrol for 10 minutes: the executor plugin
        # polls with squeue (no accounting database here) and the test reads the job records.
        "MinJobAge=600",
        "SlurmdParameters=config_overrides",
        "GresTypes=gpu",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{gpus}"
        " State=UNKNOWN",
    ]
    lines += [
        f"PartitionName={name} Nodes={node} Default={'YES' if i == 0 else 'NO'}"
        " MaxTime=INFINITE State=UP"
        for i, name in enumerate(partitions)
    ]
    return "\n".join(lines) + "\n"


def _write_files(root: Path, node: str, partitions: Sequence[str], cpus: int, memory_mb: int,
                 gpus: int) -> None:
    """slurm.conf, gres.conf, fake GPU devices, state directories and the srun shim."""
    for sub in ("state", "spool", "bin"):
        (root / sub).mkdir()
    for i in range(gpus):
        (root / f"gpu{i}").symlink_to("/dev/null")
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File={root}/gpu[0-{gpus - 1}]\n")
    (root / "slurm.conf").write_text(_slurm_conf(root, node, partitions, cpus, memory_mb, gpus))
    # Snakemake's slurm-jobstep executor drops SLURM_* variables before it calls srun inside a
    # job, so srun would look for /etc/slurm/slurm.conf; this shim, first on PATH, points it here.
    srun = root / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={root}/slurm.conf exec {shutil.which("srun")} "$@"\n')
    srun.chmod(0o755)


@contextmanager
def slurm_cluster(partitions: Sequence[str] = ("debug",), cpus: int = 4, memory_mb: int = 64000,
                  gpus: int = 2, timeout: float = 60) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd for one node; yield the cluster; tear it all down.

    ``partitions`` all hold the node, the first is the default; ``cpus``, ``memory_mb`` and
    ``gpus`` are what the node declares. Raises RuntimeError if the node is not idle in
    ``timeout`` seconds.
    """
    node = socket.gethostname().split(".")[0]
    root = Path(tempfile.mkdtemp(prefix="mldiff-slurm-"))  # short: unix socket paths <= 107
    path = os.pathsep.join([str(root / "bin"), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    cluster = Cluster(root, node, {**os.environ, "SLURM_CONF": f"{root}/slurm.conf", "PATH": path})
    try:
        _write_files(root, node, partitions, cpus, memory_mb, gpus)
        subprocess.run(["mungekey", "--create", f"--keyfile={root}/munge.key"],
                       env=cluster.env, check=True, capture_output=True)
        # --force: the private (0700) directory makes the socket unreachable for other users,
        # which munged otherwise refuses.
        cluster._start("munged", "--foreground", "--force", f"--socket={root}/munge.socket",
                       f"--key-file={root}/munge.key", f"--pid-file={root}/munged.pid",
                       f"--seed-file={root}/munged.seed", f"--log-file={root}/munged.log",
                       log="munged.out")
        deadline = time.monotonic() + timeout
        while not (root / "munge.socket").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        cluster._start("slurmctld", "-D", log="slurmctld.out")
        cluster._start("slurmd", "-D", "-N", node, log="slurmd.out")
        cluster._wait_idle(timeout)
        yield cluster
    finally:
        cluster.stop()
