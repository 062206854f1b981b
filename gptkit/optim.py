"""The optimizer and its learning-rate schedule."""

import inspect
import math

import torch

from gptkit.muon import MuonAdamW


def configure_optimizer(model, weight_decay, learning_rate, betas, device_type, optimizer="adamw"):
    """AdamW; weight decay on the 2-D weights (matmuls, embeddings), none on biases and norms.
    optimizer='muon': Muon for the matmul weights inside the blocks, AdamW for the rest."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    in_blocks = {name for name, p in params.items() if p.dim() == 2 and name.startswith("transformer.h.")}
    muon = optimizer == "muon"
    groups = [
        {"params": [p for n, p in params.items() if p.dim() >= 2 and not (muon and n in in_blocks)],
         "weight_decay": weight_decay},
        {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu")
    if muon:
        groups.append({"params": [params[n] for n in params if n in in_blocks], "weight_decay": weight_decay,
                       "muon": True})
        return MuonAdamW(groups, lr=learning_rate, betas=betas, fused=fused)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))


def get_lr(config, it):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not config.decay_lr:
        return config.learning_rate
    if it < config.warmup_iters:
        return config.learning_rate * (it + 1) / (config.warmup_iters + 1)
    if it > config.lr_decay_iters:
        return config.min_lr
    progress = (it - config.warmup_iters) / (config.lr_decay_iters - config.warmup_iters)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.learning_rate - config.min_lr)


def gradient_norm(model, clip):
    """The gradients' total norm (a tensor on the device), clipped to clip first unless it is 0."""
    if clip:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    elif hasattr(torch.nn.utils, "get_total_norm"):
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    else:  # torch < 2.6 has no get_total_norm
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a sharded norm
