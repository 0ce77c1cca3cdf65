"""rlmeta.ops: softmax and log_softmax written out equal torch's, in value and in every derivative."""

from __future__ import annotations

import torch
from torch.func import jvp

from rlmeta.agents.networks import _Categorical
from rlmeta.ops import log_softmax, softmax

DT = torch.float64


def test_they_equal_torchs_in_value_gradient_second_order_and_forward_mode():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 7, 5, generator=g, dtype=DT) * 30).requires_grad_(True)  # large logits: no overflow
    w = torch.randn(6, 7, 5, generator=g, dtype=DT)
    for ours, theirs in ((softmax, lambda v: torch.softmax(v, -1)), (log_softmax, lambda v: torch.log_softmax(v, -1))):
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
        (g1,) = torch.autograd.grad((ours(x) * w).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((theirs(x) * w).sum(), x, create_graph=True)
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
        h1, h2 = (torch.autograd.grad((g * w.flip(0)).sum(), x)[0] for g in (g1, g2))
        torch.testing.assert_close(h1, h2, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(jvp(ours, (x.detach(),), (w,))[1], jvp(theirs, (x.detach(),), (w,))[1],
                                   rtol=1e-10, atol=1e-12)
    assert torch.isfinite(softmax(torch.tensor([[1e4, -1e4, 0.0]], dtype=DT))).all()


def test_the_categoricals_probs_are_the_softmax():
    logits = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    dist = _Categorical(logits=logits, validate_args=False)
    torch.testing.assert_close(dist.probs, torch.softmax(logits, -1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dist.entropy(), torch.distributions.Categorical(logits=logits).entropy())
