"""The GPU's chunked loss (gptkit/gpu.py), checked on the CPU against torch's cross-entropy of
the whole logits: the same loss and the same gradients, so a GPU run trains the same model."""

import pytest
import torch
import torch.nn.functional as F

from gptkit.gpu import ChunkedLinearCrossEntropy, use_gpu_loss
from model import GPT, GPTConfig


def whole_logits_loss(x, weight, targets, softcap):
    logits = x @ weight.t()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.float(), targets, ignore_index=-1)


@pytest.mark.parametrize("softcap", [0.0, 15.0])
@pytest.mark.parametrize("rows_per_slice", [7, 64, 1000])
def test_chunked_loss_and_gradients_equal_the_whole_logits(softcap, rows_per_slice):
    torch.manual_seed(0)
    x = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(97, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 97, (50,))
    targets[[3, 17, 40]] = -1  # ignored positions count in neither the loss nor its mean
    expected = whole_logits_loss(x, weight, targets, softcap)
    expected_grads = torch.autograd.grad(2.5 * expected, (x, weight))
    loss = ChunkedLinearCrossEntropy.apply(x, weight, targets, softcap, rows_per_slice)
    grads = torch.autograd.grad(2.5 * loss, (x, weight))  # a scaled loss (accumulation, a GradScaler)
    torch.testing.assert_close(loss.double(), expected.double(), rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_chunked_loss_under_bfloat16_autocast_is_close_to_the_whole_logits():
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    weight = (0.1 * torch.randn(200, 32)).requires_grad_()
    targets = torch.randint(0, 200, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = whole_logits_loss(x, weight, targets, 0.0)
        loss = ChunkedLinearCrossEntropy.apply(x, weight, targets, 0.0, 16)
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
    (gx, gw), (ex, ew) = torch.autograd.grad(loss, (x, weight)), torch.autograd.grad(expected, (x, weight))
    assert gx.dtype == x.dtype and gw.dtype == weight.dtype
    torch.testing.assert_close(gx, ex, rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(gw, ew, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("options", [{}, {"tie_embeddings": False, "logit_softcap": 10.0}])
def test_a_model_with_the_gpu_loss_trains_like_the_plain_one(options):
    """A step's gradients of every weight (the tied embedding included) equal the plain model's;
    without gradients wanted (evaluation) it is the plain model, logits and all."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=32, **options)
    plain, chunked = GPT(config).double(), GPT(config).double()
    chunked.load_state_dict(plain.state_dict())
    use_gpu_loss(chunked)
    idx, targets = torch.randint(0, 40, (4, 16)), torch.randint(0, 40, (4, 16))
    _, expected = plain(idx, targets)
    expected.backward()
    logits, loss = chunked(idx, targets)
    loss.backward()
    assert logits is None
    torch.testing.assert_close(loss, expected)
    for (name, p), q in zip(plain.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(chunked(idx, targets), plain(idx, targets))
