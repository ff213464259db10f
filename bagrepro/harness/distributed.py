"""Sharding one run over several processes with ``torchrun`` (torch.distributed).

``torchrun --nproc-per-node N run_all.py ...`` starts N copies of the run; each reads its rank and
the world size from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). The work of a
shardable experiment is already cut into units (one model, or one model x heatmap method); the
units are dealt round-robin to the ranks, each rank computes its own into the shared unit store,
all ranks meet at a barrier, and then every rank reads all units. A unit is computed exactly as in
a single-process run, so the CSVs are the same; only rank 0 writes the final CSVs, the figures and
the report. The unit store must be on a file system all ranks see (one machine, or a shared disk).

torch.distributed is used only for its barrier (gloo on the CPU, NCCL with CUDA); no tensors are
exchanged, because units travel through the store.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from bagrepro.core.errors import ConfigError

#: how long a rank may wait at a barrier for the others (rank 0 also runs the experiments that are
#: not sharded, which on the full validation set can take hours)
BARRIER_TIMEOUT = timedelta(hours=24)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def world_size() -> int:
    """How many processes share this run (1 outside torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's rank in [0, world_size) (0 outside torchrun)."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's index on its machine: the GPU it uses."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True for the process that writes results, figures and the report (rank 0)."""
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def initialise(device: torch.device) -> None:
    """Join the process group torchrun set up (once); a no-op for a single process."""
    if not is_distributed() or torch.distributed.is_initialized():
        return
    if not 0 <= rank() < world_size():
        raise ConfigError(f"RANK={rank()} is outside WORLD_SIZE={world_size()}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, timeout=BARRIER_TIMEOUT)


def barrier() -> None:
    """Wait until every rank gets here; a no-op for a single process."""
    if is_distributed() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def owns(index: int) -> bool:
    """Whether the unit at ``index`` of a list every rank walks in the same order is this rank's."""
    return index % world_size() == rank()


__all__ = ["barrier", "initialise", "is_distributed", "is_main", "local_rank", "owns", "rank", "world_size"]
