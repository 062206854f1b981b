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
import torch.nn as nn

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
        self.stdout = sys.stdout
        if not self.master:  # one voice: the other ranks print no log lines (runlog.progress: no bars)
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
        if self.world_size > 1 and sys.stdout is not self.stdout:  # the other ranks' voice back
            sys.stdout.close()
            sys.stdout = self.stdout


@contextmanager
def gradient_sync(model, sync):
    """During gradient accumulation only the last micro-step's backward needs to exchange
    gradients: DistributedDataParallel's no_sync(), or FSDP's set_requires_gradient_sync(),
    holds the others back (FSDP then keeps whole gradients until that last micro-step)."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP
        model.set_requires_gradient_sync(sync)
        yield
    elif sync or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield


def shard(model, dtype):
    """FSDP: each block's weights (then the rest) split across the processes, gathered for the
    moment they compute; gradients and AdamW state stay split. For models whose weights,
    gradients and optimizer state (16 bytes a parameter) do not fit one GPU. In bfloat16 the
    weights are gathered in bfloat16 (half the traffic) and gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if dtype == "bfloat16" else MixedPrecisionPolicy()
    for block in model.transformer.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def materialise(model, device):
    """Give a sharded model built on the meta device (no memory) its initial weights on `device`,
    each process making only its own shards, equal weight for weight to what one process with
    the same seed starts from. Every process draws each whole tensor on the CPU, one at a time,
    with the draws a single process makes: first those of building the model (torch's default
    initialisation of each Linear and Embedding, made and overwritten in one process), then
    the model's own init_weights."""
    from torch.distributed.tensor import distribute_tensor

    model.to_empty(device=device)
    for module in model.modules():  # in the order they were built
        if isinstance(module, nn.Linear):
            nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        elif isinstance(module, nn.Embedding):
            nn.Embedding(module.num_embeddings, module.embedding_dim)

    def normal_shard(tensor, mean, std):
        whole = torch.empty(tensor.shape, dtype=tensor.dtype).normal_(mean, std)
        tensor.copy_(distribute_tensor(whole.to(device), tensor.device_mesh, tensor.placements, src_data_rank=None))

    model.init_weights(normal=normal_shard)
    model.make_position_tables()
