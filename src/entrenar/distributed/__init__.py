"""Data-parallel training over MPI (mpi4py), or one process: communicators, batch sharding, gradient
all-reduce, sharded optimizer state (ZeRO stage 1) and the `--nproc` launcher.

    from entrenar.distributed import world
    comm = world()                       # under `mpiexec -n 2 ...`: MPIComm; otherwise SingleProcess
    Trainer(model, loss_fn, optimizer, loader, config=config, comm=comm).train()

`mpiexec -n 2 entrenar train CONFIG.yaml` or `entrenar train CONFIG.yaml --nproc 2` runs a fine-tuning
config on two ranks. mpi4py comes with the `mpi` extra: pip install 'entrenar[mpi]'.
"""

from entrenar.distributed.comm import (
    Communicator,
    MissingMPIError,
    MPIComm,
    SingleProcess,
    chunk_bounds,
    install_abort_hook,
    launched_by_mpi,
    world,
)
from entrenar.distributed.data_parallel import BUCKET_BYTES, DataParallel, Shard, batch_weight, shard_batch
from entrenar.distributed.zero import ZeroOptimizer

__all__ = [
    "BUCKET_BYTES",
    "Communicator",
    "DataParallel",
    "MPIComm",
    "MissingMPIError",
    "Shard",
    "SingleProcess",
    "ZeroOptimizer",
    "batch_weight",
    "chunk_bounds",
    "install_abort_hook",
    "launched_by_mpi",
    "shard_batch",
    "world",
]
