"""Muon for the weight matrices inside the transformer blocks, AdamW for everything else, as one
optimizer (Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024).

Muon keeps a momentum of each matrix's gradient and steps along its orthogonalised form: the
same singular vectors, every singular value near 1, found by a few Newton-Schulz iterations.
Each step is scaled by 0.2 * sqrt(max(rows, columns)), which gives it the size of a typical
AdamW step (Moonshot AI, "Muon is Scalable for LLM Training", 2025), so one learning rate, one
schedule and one weight decay serve both halves. Embeddings, the output layer, biases and
LayerNorms stay with AdamW: they are lookups and vectors, not matrices acting on a hidden state.
"""

import math

import torch
from torch.optim.adamw import adamw


def orthogonalise(G, steps=5, eps=1e-7):
    """U V^T for G = U S V^T, approximately (singular values land in roughly [0.7, 1.2]), for a
    batch of matrices (batch, rows, cols) at once: the quintic Newton-Schulz iteration in
    bfloat16, with the coefficients Muon uses (they push small singular values up fast)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16()
    wide = X.size(-2) <= X.size(-1)
    X = X if wide else X.mT  # iterate on X X^T, the smaller Gram matrix
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # every singular value now <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + b A X + c A^2 X
    return X if wide else X.mT


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with muon=True (2-D weights) step by Muon, with Nesterov momentum (0.95, as
    Muon's authors use); the others by AdamW, with betas. Each group has its lr and weight_decay."""

    def __init__(self, groups, lr, betas, fused=False):
        super().__init__(groups, dict(lr=lr, betas=betas, weight_decay=0.0, eps=1e-8, muon=False, momentum=0.95))
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon steps 2-D weights only")
        self.fused = fused

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self.muon_step if group["muon"] else self.adamw_step)(group, params)

    def muon_step(self, group, params):
        lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        by_shape = {}
        for p in params:  # (rows, cols) and (cols, rows) together: each tall one is taken transposed
            by_shape.setdefault(tuple(sorted(p.shape)), []).append(p)
        for shape, same in by_shape.items():  # each shape's matrices orthogonalised in one batch
            grads = [p.grad for p in same]
            buffers = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in same]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)  # an average of the gradients, recent ones weighed most
            updates = torch._foreach_lerp(grads, buffers, momentum)  # Nesterov: a step past it, toward the gradient
            tall = [p.size(0) > p.size(1) for p in same]
            wide = torch.stack([u.mT if t else u for u, t in zip(updates, tall)])
            directions = [d.mT if t else d for d, t in zip(orthogonalise(wide).to(same[0].dtype).unbind(0), tall)]
            torch._foreach_mul_(same, 1 - lr * decay)
            torch._foreach_add_(same, directions, alpha=-lr * 0.2 * math.sqrt(max(shape)))

    def adamw_step(self, group, params):
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
              [], [s["step"] for s in states], fused=self.fused or None, amsgrad=False, beta1=beta1, beta2=beta2,
              lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
