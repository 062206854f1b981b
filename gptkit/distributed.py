"""Many processes under torchrun, with PyTorch's own engine (DistributedDataParallel, FSDP):

    torchrun --standalone --nproc_per_node=8 train.py configs/gpt2.py

torchrun starts the processes and tells each its rank through the environment; without it a
run is one process and nothing here does anything. Rank 0 writes (logs, metrics,
checkpoints); every rank computes.
"""

import os
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist

from gptkit.hardware import resolve_device
from gptkit.settings import UserError


class Processes:
    """This process's place among the run's: rank, world size, and its device."""

    def __init__(self, backend="auto", device="auto"):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.master = self.rank == 0
        if self.world_size == 1:
            self.device = resolve_device(device)
            return
        self.device = self.device_of_rank(device)
        if backend == "auto":  # NCCL between GPUs, gloo between CPU processes
            backend = "nccl" if self.device.startswith("cuda") else "gloo"
        if backend == "nccl" and not self.device.startswith("cuda"):
            raise UserError(f"backend=nccl needs GPUs, but this run's device is {self.device}; "
                            f"use --backend=gloo (or leave backend at auto)")
        if not self.master:  # one voice: the other ranks print no log lines (progress.py: no bars)
            sys.stdout = open(os.devnull, "w")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's store outlives a restart (--max-restarts), and gloo would find there the
            # addresses of the processes that died: each attempt gets keys of its own.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world_size,
                                  is_master=False)
            store = dist.PrefixStore(f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
            dist.init_process_group(backend=backend, store=store, rank=self.rank, world_size=self.world_size)
        else:
            dist.init_process_group(backend=backend)

    def device_of_rank(self, device):
        if device not in ("auto", "cuda", "cpu"):
            raise UserError(f"device={device} under torchrun: each process takes the GPU of its LOCAL_RANK; "
                            f"leave device at auto (or cuda), and choose GPUs with CUDA_VISIBLE_DEVICES")
        if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
            return resolve_device("cpu")
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError("device=cuda under torchrun, but CUDA is not available here; use --device=cpu")
        if self.local_rank >= count:
            raise UserError(f"torchrun started more processes on this node than it has GPUs ({count}); "
                            f"use --nproc_per_node={count}")
        torch.cuda.set_device(self.local_rank)
        return f"cuda:{self.local_rank}"

    def sum(self, value):
        """A float summed over every rank (the same total back on each)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item()

    def any(self, flag):
        """True on every rank if it is True on any: one decision for all, so none waits forever."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, value):
        """[value of rank 0, value of rank 1, ...] on every rank (any picklable value)."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def no_sync_unless(model, sync):
    """DistributedDataParallel averages gradients across ranks on each backward; during
    gradient accumulation only the last micro-step's needs to."""
    if sync or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield


def shard(model):
    """FSDP: each block's weights (then the rest) split across the processes, gathered for the
    moment they compute; gradients and AdamW state stay split. For models whose weights,
    gradients and optimizer state (16 bytes a parameter) do not fit one GPU."""
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
