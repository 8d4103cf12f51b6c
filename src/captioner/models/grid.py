"""What the grid-attending decoder families share: the G x G grid features standardised, projected to values and
told their place, and Bahdanau (additive) attention weights over them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from captioner.models.decoder import State, batch_norm


class GridValues(nn.Module):
    """Mixin for a decoder over the grid: ``standardize`` (BatchNorm without affine, running statistics in training
    too), ``values`` (Linear to ``context_size``) and ``where`` (a learned embedding of each cell's place: a CNN's
    cell features hardly say where they are, so without it a context could not tell left from right)."""

    def init_grid(self, feature_size: int, context_size: int, cells: int) -> None:
        self.standardize = nn.BatchNorm1d(feature_size, affine=False)
        self.values = nn.Linear(feature_size, context_size)
        self.where = nn.Parameter(0.1 * torch.randn(cells, context_size))

    def grid_values(self, features: torch.Tensor) -> torch.Tensor:
        """Values [B, N, D] of grid features [B, N, C]."""
        x = batch_norm(self.standardize, features.float().flatten(0, 1)).view_as(features)
        return self.values(x) + self.where

    # a family's ``_advance(tokens, state, affines)`` reads one word; ``affines`` (decoder.Affines) holds its
    # layers' weights, the output layer last, prepared once per step for int8 and ONNX alike
    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Log-probabilities [B, V] of the word after ``tokens`` [B], the next state, the attention [B, N]."""
        affines = self.affines(self.parameters())
        hidden, state, alpha = self._advance(tokens, state, affines)
        return F.log_softmax(affines[-1](hidden), dim=-1), state, alpha

    def advance(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """``step`` up to the output layer's input [B, H] (before dropout), for step-by-step training."""
        return self._advance(tokens, state, self.affines(self.parameters()))


def additive_scores(keys: torch.Tensor, query: torch.Tensor, score: nn.Linear) -> torch.Tensor:
    """Unnormalised attention scores [B, T, N] of the cells' keys [B, N, A] for the queries [B, T, A]:
    w . tanh(key + query) + b. Under autograd (training, in either precision) by ``AdditiveScores``; plain ops
    otherwise (search, export)."""
    # under bf16 autocast too: its float32 tanh beats autograd's bf16 ops (batch 32 x 14 words x 49 cells x 256 on 2
    # cores, forward and backward: 12.7 vs 23.5 ms)
    if (torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export()):
        return AdditiveScores.apply(keys, query, score.weight, score.bias)
    return score(torch.tanh(keys.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)


class AdditiveScores(torch.autograd.Function):
    """``additive_scores`` with its backward written out: autograd kept two [B, T, N, A] tensors (the sum and its
    tanh), made the tanh's gradient as a K=1 matrix product [BTN, 1] x [1, A] and three more passes over it (~45% of
    a training step on CPU). Here one tensor, s = sigmoid(2 (key + query)), holds all the big tensor's work: tanh is
    2 s - 1, so the score is 2 w . s - sum(w) + b and tanh's derivative 4 s (1 - s); w multiplies the gradient after
    the sums over cells and words, on tensors N or T times smaller. 8 passes over [B, T, N, A], not 12.

    On CPU it is float32 whatever the inputs' dtype: PyTorch's sigmoid there is 3-4x faster than its float32 tanh,
    and faster than its bf16 tanh too. Elsewhere (GPU) it keeps the inputs' dtype."""

    @staticmethod
    def forward(ctx, keys: torch.Tensor, query: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        ctx.dtypes = keys.dtype, query.dtype
        dtype = torch.float32 if keys.is_cpu else keys.dtype
        with torch.autocast(keys.device.type, enabled=False):  # a bf16 copy of s would cost more than the product
            s = torch.add(2 * keys.to(dtype).unsqueeze(1), 2 * query.to(dtype).unsqueeze(2)).sigmoid_()
            w = weight.to(dtype).view(-1)
            ctx.save_for_backward(s, weight)
            return 2 * torch.matmul(s, w) + (bias.to(dtype) - w.sum())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s, weight = ctx.saved_tensors
        with torch.autocast(s.device.type, enabled=False):
            grad = grad.to(s.dtype)
            grad_weight = (2 * torch.mv(s.flatten(0, 2).t(), grad.flatten()) - grad.sum()).view_as(weight)
            # the gradient overwrites s: no second tensor of its size; a second backward through this graph
            # (retain_graph) raises autograd's error about an in-place change to a saved tensor
            d = s.addcmul_(s, s, value=-1).mul_(grad.unsqueeze(-1))  # s (1 - s) times the upstream gradient
            w4 = 4 * weight.to(s.dtype).view(-1)
            keys_dtype, query_dtype = ctx.dtypes
            return ((d.sum(1) * w4).to(keys_dtype), (d.sum(2) * w4).to(query_dtype), grad_weight.to(weight.dtype),
                    grad.sum().view(1).to(weight.dtype))


def additive_weights(keys: torch.Tensor, query: torch.Tensor, score: nn.Module) -> torch.Tensor:
    """Bahdanau attention weights [B, T, N] (softmax over the cells) of ``additive_scores``."""
    return F.softmax(additive_scores(keys, query, score), dim=-1)


def teacher_force(decoder: nn.Module, features: torch.Tensor,
                  captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing as a loop of the decoder's steps, for families whose LSTM reads what the step before computed
    (so no single nn.LSTM call covers a caption): the output layer's inputs [B, T-1, H] and the attention [B, T-1, N].

    The step's affine maps are built once for the whole caption; the hidden states are laid out time-major before
    dropout, as ``unroll`` does, so scheduled sampling draws the same mask."""
    affines = decoder.affines(decoder.parameters())
    state, hidden, alphas = decoder.start(features), [], []
    for t in range(captions.size(1) - 1):
        h, state, alpha = decoder._advance(captions[:, t], state, affines)
        hidden.append(h)
        alphas.append(alpha)
    return decoder.drop(torch.stack(hidden).transpose(0, 1)), torch.stack(alphas, 1)
