"""`--nproc N`: start this very command again as N MPI ranks on this machine, over loopback only.

    entrenar train run.yaml --nproc 2
    # runs: <venv>/bin/mpiexec.gforker -n 2 <python> -m entrenar train run.yaml --nproc 2

The launcher is the MPI found next to the running Python (the `mpich` wheel of the `mpi` extra puts
it in the venv's bin), else on PATH. Traffic stays on this machine:
- MPICH's gforker process manager (preferred) forks the ranks and talks to them over pipes and
  Unix sockets: no TCP at all; MPICH's hydra `mpiexec` gets `-launcher fork -host 127.0.0.1
  -iface lo` (its control connections go to 127.0.0.1).
- The ranks use shared memory between them: MPIR_CVAR_CH4_NETMOD=ofi with FI_PROVIDER=shm keeps
  MPICH's network module off every interface (without them it listens on each interface's address).
tests/distributed checks that no rank holds an inet socket away from 127.0.0.1.

The launcher's exit status is the job's: 0 when every rank exits 0, else non-zero (an aborted job:
the failing rank's traceback, prefixed with its rank, is on stderr; see `install_abort_hook`).
On clusters, call the cluster's launcher instead (README, "Clusters").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from entrenar.distributed.comm import MissingMPIError

__all__ = ["LOOPBACK_ENV", "find_mpiexec", "launch", "mpiexec_command", "ranks_command"]

LOOPBACK_ENV: Mapping[str, str] = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "shm"}
_HYDRA_LOOPBACK = ("-launcher", "fork", "-host", "127.0.0.1", "-iface", "lo")


def find_mpiexec(python: str | None = None) -> Path:
    """The MPI launcher to use: mpiexec.gforker or mpiexec beside `python` (default the running one),
    else on PATH. MissingMPIError naming the `mpi` extra when there is none."""
    bin_dir = Path(python or sys.executable).parent
    for name in ("mpiexec.gforker", "mpiexec"):
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    for name in ("mpiexec.gforker", "mpiexec"):
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    raise MissingMPIError(
        f"--nproc needs an MPI launcher (mpiexec) beside {python or sys.executable} or on PATH: "
        "pip install 'entrenar[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"
    )


def ranks_command(nproc: int, program: Sequence[str], *, mpiexec: Path) -> list[str]:
    """The command that runs `program` (argv) as `nproc` ranks on this machine, with loopback flags."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be a whole number >= 1, got {nproc!r}")
    flags = [] if mpiexec.name == "mpiexec.gforker" else list(_HYDRA_LOOPBACK)
    return [os.fspath(mpiexec), "-n", str(nproc), *flags, *program]


def mpiexec_command(
    nproc: int, args: Sequence[str], *, mpiexec: Path, python: str | None = None
) -> list[str]:
    """The command that runs `python -m entrenar *args` as `nproc` ranks on this machine (loopback)."""
    return ranks_command(nproc, [python or sys.executable, "-m", "entrenar", *args], mpiexec=mpiexec)


def launch(nproc: int, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
    """Run `entrenar *args` as `nproc` MPI ranks here and wait; the launcher's exit status."""
    mpiexec = find_mpiexec()
    try:
        import mpi4py  # noqa: F401  (checked here, so a missing one is one clear message, not N tracebacks)
    except ImportError as exc:
        raise MissingMPIError(
            f"--nproc needs mpi4py: pip install 'entrenar[mpi]' (import failed: {exc})"
        ) from exc
    command = mpiexec_command(nproc, args, mpiexec=mpiexec)
    child_env = {**os.environ, **(env or {}), **LOOPBACK_ENV}
    return subprocess.call(command, env=child_env)
