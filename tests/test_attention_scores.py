"""The additive attention score's written-out backward (models/grid.AdditiveScores) against autograd's plain ops."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from captioner.models import adaptive, attention, grid
from captioner.models.attention import attention_penalty
from captioner.models.config import ModelConfig
from captioner.models.decoder import caption_loss
from captioner.models.families import create_decoder

ADDITIVE = ("attention", "adaptive", "topdown")  # the families scoring cells with w . tanh(key + query)


def plain_scores(keys: torch.Tensor, query: torch.Tensor, score: nn.Linear) -> torch.Tensor:
    return score(torch.tanh(keys.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)


def scores_and_grads(fn, keys, query, score, upstream) -> list[torch.Tensor]:
    keys, query = keys.clone().requires_grad_(), query.clone().requires_grad_()
    score.zero_grad()
    out = fn(keys, query, score)
    (out * upstream).sum().backward()
    return [out, keys.grad, query.grad, score.weight.grad, score.bias.grad]


@pytest.mark.parametrize("seed", range(6))
def test_the_scores_and_their_gradients_are_autograds(seed: int) -> None:
    """Random sizes, keys and queries of any scale (tanh saturated or not): the values and gradients of autograd's
    plain ops in float64, about as close as autograd's own float32 ones (a gradient sums up to B T N terms of at most
    the upstream gradient's size: float32 rounds such sums within ~1e-6 of the upstream's total, either way)."""
    g = torch.Generator().manual_seed(seed)
    b, t, n, a = (int(x) for x in torch.randint(1, 9, (4,), generator=g))
    scale = float(torch.rand((), generator=g) * 5)
    keys, query = scale * torch.randn(b, n, a, generator=g), scale * torch.randn(b, t, a, generator=g)
    score = nn.Linear(a, 1)
    upstream = torch.randn(b, t, n, generator=g)
    fused = scores_and_grads(grid.additive_scores, keys, query, score, upstream)
    plain = scores_and_grads(plain_scores, keys, query, score, upstream)
    exact = scores_and_grads(plain_scores, keys.double(), query.double(), copy.deepcopy(score).double(),
                             upstream.double())
    for x, y, z in zip(fused, plain, exact, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype == torch.float32
        assert (x.double() - z).abs().max() <= 2 * (y.double() - z).abs().max() + 1e-6 * (1 + upstream.abs().sum())


def test_bf16_inputs_get_bf16_gradients_close_to_float32s() -> None:
    torch.manual_seed(0)
    keys, query, score = torch.randn(3, 5, 8), torch.randn(3, 4, 8), nn.Linear(8, 1)
    upstream = torch.randn(3, 4, 5)
    exact = scores_and_grads(plain_scores, keys, query, score, upstream)
    low = scores_and_grads(grid.additive_scores, keys.bfloat16(), query.bfloat16(), score, upstream)
    assert low[1].dtype == low[2].dtype == torch.bfloat16 and low[3].dtype == torch.float32
    for x, y in zip(low, exact, strict=True):
        torch.testing.assert_close(x.float(), y, atol=0.05, rtol=0.02)


def test_bf16_autocast_training_takes_the_written_out_backward() -> None:
    """Under autocast (bf16 training) too: on 2 cores it is ~2x faster than autograd's bf16 ops for the attention's
    [B, T, N, A] tensor, and computes it in float32."""
    keys, query = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 5, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = grid.additive_scores(keys.bfloat16(), query.bfloat16(), nn.Linear(4, 1))
    assert type(out.grad_fn).__name__ == "AdditiveScoresBackward" and out.dtype == torch.float32


def test_a_second_backward_through_the_scores_is_an_error_not_a_wrong_gradient() -> None:
    keys, query = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 5, 4, requires_grad=True)
    out = grid.additive_scores(keys, query, nn.Linear(4, 1)).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        out.backward()


def test_without_autograd_the_scores_are_plain_ops() -> None:
    """Search and export (traced without autograd) see no custom Function."""
    keys, query, score = torch.randn(2, 3, 4), torch.randn(2, 5, 4), nn.Linear(4, 1)
    with torch.no_grad():
        out = grid.additive_scores(keys, query, score)
        torch.testing.assert_close(out, plain_scores(keys, query, score))
    assert out.grad_fn is None


@pytest.mark.parametrize(("family", "chunk"), [(family, attention.CHUNK) for family in ADDITIVE] + [
    ("attention", 50)])  # 50: the attention family's checkpointed chunks of words
def test_a_training_step_of_each_family_is_unchanged(family: str, chunk: int, monkeypatch) -> None:
    """The loss (cross-entropy + attention penalty) and every parameter's gradient, against autograd's ops."""
    monkeypatch.setattr(attention, "CHUNK", chunk)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=11, decoder=family, grid=2, embed_size=5, hidden_size=7, attention_size=4,
                         context_size=3)
    decoder = create_decoder(family, config, 6).train()
    features, captions = torch.randn(4, 4, 6), torch.randint(1, 11, (4, 6))
    captions[1, 4:] = 0  # padding

    def step() -> list[torch.Tensor]:
        torch.manual_seed(1)  # the same dropout masks in both steps
        decoder.zero_grad()
        hidden, alphas = decoder(features, captions)
        loss = caption_loss(decoder.out, hidden, captions) + attention_penalty(alphas, captions)
        loss.backward()
        return [loss] + [p.grad for p in decoder.parameters()]

    decoder(features, captions)  # the first training batch sets the standardisation's statistics
    fused = step()
    monkeypatch.setattr(grid, "additive_scores", plain_scores)
    monkeypatch.setattr(adaptive, "additive_scores", plain_scores)
    for x, y in zip(fused, step(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
