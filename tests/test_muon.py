"""Muon (muon.py): its orthogonalisation, its steps against torch's own Muon and AdamW, and
which weights each half of it steps."""
import copy

import pytest
import torch

from model import GPT, GPTConfig
from gptkit.muon import MuonAdamW, orthogonalise
from gptkit.optim import configure_optimizer


@pytest.mark.parametrize("shape", [(3, 48, 16), (3, 16, 48), (2, 32, 32)])
def test_orthogonalise_keeps_the_singular_vectors_and_evens_the_values(shape):
    """For G = U S V^T it gives about U V^T: every singular value near 1, the directions G's."""
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    O = orthogonalise(G).float()
    assert O.shape == G.shape
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    values = torch.linalg.svdvals(O)
    assert values.max() < 1.25 and values.min() > 0.3  # a square G's smallest values come up slowest
    assert 0.8 < values.median() < 1.2
    cosine = (O * polar).sum((-2, -1)) / (O.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert (cosine > 0.97).all()


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.0, bias=True))


def test_muon_steps_as_torch_muon_and_adamw_do():
    """optimizer='muon' gives, step for step, torch.optim.Muon (Moonshot's step size, which lets
    it share AdamW's learning rate) on the matrices inside the blocks and torch.optim.AdamW on the
    rest (weight decay on the embeddings, none on biases and norms)."""
    ours = tiny_gpt()
    theirs = copy.deepcopy(ours)
    optimizer = configure_optimizer(ours, 0.1, 3e-3, (0.9, 0.99), "cpu", optimizer="muon")
    assert isinstance(optimizer, MuonAdamW)
    matrices = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    named = dict(theirs.named_parameters())
    in_blocks = [n for n in named if n.startswith("transformer.h.") and n.split(".", 3)[3] in matrices]
    assert len(in_blocks) == 8
    muon = torch.optim.Muon([named[n] for n in in_blocks], lr=3e-3, weight_decay=0.1, momentum=0.95,
                            adjust_lr_fn="match_rms_adamw")
    rest = [n for n in named if n not in in_blocks]
    adamw = torch.optim.AdamW([{"params": [named[n] for n in rest if named[n].dim() == 2], "weight_decay": 0.1},
                               {"params": [named[n] for n in rest if named[n].dim() == 1], "weight_decay": 0.0}],
                              lr=3e-3, betas=(0.9, 0.99), fused=True)  # as ours takes on a CPU
    batches = torch.Generator().manual_seed(1)
    for step in range(4):
        x, y = torch.randint(0, 50, (2, 4, 16), generator=batches)
        for model, optimizers in ((ours, [optimizer]), (theirs, [muon, adamw])):
            model(x, y)[1].backward()
            for o in optimizers:
                o.step()
                o.zero_grad()
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{name} after step {step}")
    assert not torch.equal(ours.transformer.h[0].mlp.c_fc.weight, tiny_gpt().transformer.h[0].mlp.c_fc.weight)


def test_muon_takes_only_matrices():
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}], lr=1e-3, betas=(0.9, 0.95))
