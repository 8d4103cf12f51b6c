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


def additive_scores(keys: torch.Tensor, query: torch.Tensor, score: nn.Module) -> torch.Tensor:
    """Unnormalised attention scores [B, T, N] of the cells' keys [B, N, A] for the queries [B, T, A]."""
    return score(torch.tanh(keys.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)


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
