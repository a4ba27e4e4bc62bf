"""Pure pieces of the multiview-equivariance method: the smooth-AP loss and q/v LoRA."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_vit

from fit3d_hub.lora import QVLoRA, add_lora, merge_lora
from training.equivariance.loss import smooth_ap_loss


def _sig(x: float, t: float = 0.01) -> float:
    return 1.0 / (1.0 + math.exp(max(-50.0, min(50.0, -x / t))))


def _brute_force(d1, d2, dist, pos=5e-3, neg=0.1) -> float:
    """The loss written pair by pair from the formula, in plain Python floats."""
    sim = (d1 @ d2.T).tolist()
    dist = dist.tolist()
    terms = []
    for i, row in enumerate(dist):
        for j, d in enumerate(row):
            if d >= pos:
                continue
            sp = sim[i][j]
            negs = [sim[i][k] for k, dk in enumerate(row) if dk > neg]
            a1, a2 = _sig(sp - 1), _sig(1 - sp)
            ap1 = (1 + a1) / (1 + a1 + sum(_sig(s - 1) for s in negs))
            ap2 = (1 + a2) / (1 + a2 + sum(_sig(s - sp) for s in negs))
            terms.append(1 - (ap1 + ap2) / 2)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smooth_ap_matches_a_brute_force_reference(seed):
    g = torch.Generator().manual_seed(seed)
    d1 = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    d2 = torch.nn.functional.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1)
    # distances spread over positives (< 5e-3), the ignored band and negatives (> 0.1)
    dist = torch.rand(7, 9, generator=g, dtype=torch.float64) * 0.2
    dist[torch.rand(7, 9, generator=g) < 0.2] = 1e-3
    got = smooth_ap_loss(d1, d2, dist)
    assert got.item() == pytest.approx(_brute_force(d1, d2, dist), rel=1e-12)


def test_smooth_ap_falls_when_positives_match_better():
    d2 = torch.eye(4, dtype=torch.float64)
    dist = torch.full((4, 4), 1.0, dtype=torch.float64).fill_diagonal_(0.0)
    good = smooth_ap_loss(d2.clone(), d2, dist)
    bad = smooth_ap_loss(d2.roll(1, dims=0), d2, dist)
    assert good.item() < 0.01 < 0.4 < bad.item()


def test_smooth_ap_without_a_positive_is_one_line():
    with pytest.raises(ValueError, match="no point pair closer than 0.005"):
        smooth_ap_loss(torch.eye(2), torch.eye(2), torch.ones(2, 2))


def test_lora_starts_as_identity_and_trains_only_its_matrices():
    vit = tiny_vit(0, depth=6)
    x = torch.randn(1, 3, 28, 28)
    before = vit.forward_features(x)
    adapters = add_lora(vit)
    assert len(adapters) == 4 and all(isinstance(b.attn.qkv, QVLoRA) for b in vit.blocks[-4:])
    assert not isinstance(vit.blocks[1].attn.qkv, QVLoRA)
    torch.testing.assert_close(vit.forward_features(x), before, rtol=0, atol=0)
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 * 4 and all(n.split(".")[-2] in ("a_q", "b_q", "a_v", "b_v")
                                           for n in trainable)
    assert adapters[0].a_q.weight.shape == (4, 32) and adapters[0].b_v.weight.shape == (32, 4)


def test_lora_leaves_k_alone_and_merges_into_the_same_function():
    vit = tiny_vit(0, depth=6)
    add_lora(vit)
    with torch.no_grad():
        for p in vit.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    x = torch.randn(2, 3, 28, 42)
    adapted = vit.forward_features(x)
    adapter = vit.blocks[-1].attn.qkv
    tokens = torch.randn(2, 5, 32)
    delta = adapter(tokens) - adapter.qkv(tokens)
    assert delta[..., 32:64].abs().max() == 0 and delta[..., :32].abs().max() > 0
    merged = merge_lora(vit)
    assert not any(isinstance(b.attn.qkv, QVLoRA) for b in merged.blocks)
    assert set(merged.state_dict()) == set(tiny_vit(1, depth=6).state_dict())
    torch.testing.assert_close(merged.forward_features(x), adapted, rtol=1e-5, atol=1e-5)
