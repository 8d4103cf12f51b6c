"""Show, Attend and Tell (Xu et al. 2015): soft additive attention over the encoder's G x G grid at every word."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from captioner.data.vocab import PAD
from captioner.models.decoder import Affine, Affines, State, lstm_cell

RECOMPUTE_ABOVE = 2**20  # a training step's attention over more numbers than this ([B, N, A]) is recomputed in the
# backward pass rather than kept for every word: COCO at batch 512 (7x7 x 256) keeps 0.6 GB less, the demo none


class ShowAttendTell(nn.Module):
    """Grid -> values (Linear); per step: Bahdanau attention from h, sigmoid-gated context, LSTMCell, Linear.

    The initial h/c come from the mean of the values. The values are a projection of the standardised grid
    (``context_size`` wide), which keeps each step cheap whatever the trunk's channel count, plus a learned
    embedding of each cell's place: a CNN's cell features hardly say where they are, so without it the context
    could not tell "left" from "right".
    """

    def __init__(self, vocab_size: int, feature_size: int, embed_size: int = 256, hidden_size: int = 512,
                 attention_size: int = 256, context_size: int = 256, dropout: float = 0.0, cells: int = 49) -> None:
        super().__init__()
        self.standardize = nn.BatchNorm1d(feature_size, affine=False)
        self.values = nn.Linear(feature_size, context_size)
        self.where = nn.Parameter(0.1 * torch.randn(cells, context_size))
        self.keys = nn.Linear(context_size, attention_size)
        self.query = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1)
        self.init_h = nn.Linear(context_size, hidden_size)
        self.init_c = nn.Linear(context_size, hidden_size)
        self.gate = nn.Linear(hidden_size, context_size)
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=PAD)
        self.cell = nn.LSTMCell(embed_size + context_size, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)
        self.affines = Affines(self._affines)

    def start(self, features: torch.Tensor) -> State:
        """(h, c, values [B, N, D], keys [B, N, A]) from grid features [B, N, C]."""
        x = self.standardize(features.float().flatten(0, 1)).view_as(features)
        values = self.values(x) + self.where
        mean = values.mean(1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), values, self.keys(values)

    def _advance(self, words: torch.Tensor, state: State, affines: tuple[Affine, ...]) -> tuple[State, torch.Tensor]:
        """One word: Bahdanau attention [B, N] from h, the sigmoid-gated context and the LSTM cell."""
        h, c, values, keys = state
        query, gate = affines[0](h).split([self.query.out_features, self.gate.out_features], 1)
        if self.training and torch.is_grad_enabled() and keys.numel() > RECOMPUTE_ABOVE:
            alpha = checkpoint(self._attend, keys, query, use_reentrant=False)
        else:
            alpha = self._attend(keys, query)
        context = torch.sigmoid(gate) * torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
        h, c = lstm_cell(torch.cat([words, context, h], 1), c, affines[1])
        return (h, c, values, keys), alpha

    def _attend(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Bahdanau attention weights [B, N] from the cells' keys [B, N, A] and the query [B, A]."""
        return F.softmax(self.score(torch.tanh(keys + query.unsqueeze(1))).squeeze(-1), dim=-1)

    def _affines(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Query and gate (both read h), the cell's gates of [word; context; h], the output layer."""
        cell = self.cell
        return [(torch.cat([self.query.weight, self.gate.weight]), torch.cat([self.query.bias, self.gate.bias])),
                (torch.cat([cell.weight_ih, cell.weight_hh], 1), cell.bias_ih + cell.bias_hh),
                (self.out.weight, self.out.bias)]

    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: the output layer's inputs [B, T-1, H] predicting captions[:, 1:] (``caption_loss`` applies
        ``self.out``) and the attention [B, T-1, N].

        Padded positions (after a caption's end) are computed but ignored by the loss and the regulariser.
        """
        state, words, affines = self.start(features), self.embed(captions[:, :-1]), self.affines(self.parameters())
        hidden, alphas = [], []
        for t in range(words.size(1)):
            state, alpha = self._advance(words[:, t], state, affines)
            hidden.append(state[0])
            alphas.append(alpha)
        return self.drop(torch.stack(hidden, 1)), torch.stack(alphas, 1)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Log-probabilities [B, V] of the word after ``tokens`` [B], the next state, the attention [B, N]."""
        affines = self.affines(self.parameters())
        state, alpha = self._advance(self.embed(tokens), state, affines)
        return F.log_softmax(affines[2](state[0]), dim=-1), state, alpha


def attention_penalty(alphas: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Doubly stochastic regulariser: mean over images of sum over cells of (1 - sum over words of alpha)^2."""
    mask = (captions[:, 1:] != PAD).unsqueeze(-1).to(alphas.dtype)
    return ((1 - (alphas * mask).sum(1)) ** 2).sum(-1).mean()
