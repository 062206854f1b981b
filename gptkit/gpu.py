"""The GPU's fast path, put into a model from outside when it trains on a GPU, so that model.py
stays the plain GPT: the loss computed from the final hidden states a slice of rows at a time.

GPT.head makes the logits of every position, (B, T, vocab_size), then a float32 copy for the
cross-entropy: for GPT-2 124M at 12 x 1024 tokens, 1.2 GB in bfloat16 and 2.5 GB in float32,
each written and read again by the softmax and its backward. Here each slice of rows makes its
logits, takes their loss and their gradients at once, and lets them go: the same loss and
gradients, with one slice's logits and their gradient alive at any time (ROWS_PER_SLICE rows)."""

import torch

from model import GPT

ROWS_PER_SLICE = 4096  # x 50,304 float32 logits: 0.8 GB at a time, large enough to keep the GPU's matmuls full


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean over rows of cross_entropy(softcap(x @ weight.T), targets), targets of -1 ignored, with
    its gradients made in the forward pass (the logits are not kept for a backward pass).
    x (N, C), weight (V, C), targets (N,). Matmuls run in the ambient autocast's precision;
    the softmax and the loss in float32."""

    @staticmethod
    def forward(ctx, x, weight, targets, softcap, rows_per_slice):
        counted = (targets != -1).sum().clamp(min=1)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, x.size(0), rows_per_slice):
            rows, wanted = x[start : start + rows_per_slice], targets[start : start + rows_per_slice]
            logits = (rows @ weight.t()).float()  # (n, V)
            if softcap:
                capped = torch.tanh(logits / softcap)
                logits = softcap * capped
            kept = (wanted != -1).float()
            picked = wanted.clamp(min=0)[:, None]
            log_sum_exp = torch.logsumexp(logits, dim=-1)
            total += ((log_sum_exp - logits.gather(1, picked)[:, 0]) * kept).sum()
            # d(loss)/d(logits) = softmax - one-hot, for the rows that count
            grad = torch.exp(logits - log_sum_exp[:, None])
            grad.scatter_add_(1, picked, -torch.ones_like(picked, dtype=grad.dtype))
            grad *= kept[:, None]
            if softcap:
                grad *= 1 - capped * capped
            grad = grad.to(rows.dtype)  # under autocast the matmuls below run in its precision all the same
            grad_x[start : start + rows_per_slice] = grad @ weight
            grad_weight += grad.t() @ rows
        ctx.save_for_backward(grad_x / counted, grad_weight / counted)
        return total / counted

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_weight = ctx.saved_tensors
        return grad_x * grad_loss, grad_weight * grad_loss, None, None, None


class ChunkedLossGPT(GPT):
    """GPT whose training loss (with gradients wanted) is ChunkedLinearCrossEntropy; it returns
    no logits then, which training does not read. Evaluation and sampling are GPT's own."""

    def head(self, x, targets=None):
        if targets is None or not torch.is_grad_enabled():
            return super().head(x, targets)
        loss = ChunkedLinearCrossEntropy.apply(x.flatten(0, 1), self.lm_head.weight, targets.flatten(),
                                               self.config.logit_softcap, ROWS_PER_SLICE)
        return None, loss


def use_gpu_loss(model):
    """Swap the chunked loss into model (in place; the weights are untouched)."""
    if type(model) is GPT:
        model.__class__ = ChunkedLossGPT
    return model
