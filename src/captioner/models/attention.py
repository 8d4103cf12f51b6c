"""Show, Attend and Tell (Xu et al. 2015): soft additive attention over the encoder's G x G grid at every word."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from captioner.data.vocab import PAD
from captioner.models.decoder import State


class ShowAttendTell(nn.Module):
    """Grid -> values (Linear); per step: Bahdanau attention from h, sigmoid-gated context, LSTMCell, Linear.

    The initial h/c come from the mean of the values. The values are a projection of the standardised grid
    (``context_size`` wide), which keeps each step cheap whatever the trunk's channel count.
    """

    def __init__(self, vocab_size: int, feature_size: int, embed_size: int = 256, hidden_size: int = 512,
                 attention_size: int = 256, context_size: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.standardize = nn.BatchNorm1d(feature_size, affine=False)
        self.values = nn.Linear(feature_size, context_size)
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

    def start(self, features: torch.Tensor) -> State:
        """(h, c, values [B, N, D], keys [B, N, A]) from grid features [B, N, C]."""
        b, n, c = features.shape
        x = self.standardize(features.float().reshape(b * n, c)).view(b, n, c)
        values = self.values(x)
        mean = values.mean(1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), values, self.keys(values)

    def attend(self, h: torch.Tensor, values: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated context [B, D] and attention weights [B, N] (a softmax over the cells) for state ``h``."""
        alpha = F.softmax(self.score(torch.tanh(keys + self.query(h).unsqueeze(1))).squeeze(-1), dim=-1)
        context = torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
        return torch.sigmoid(self.gate(h)) * context, alpha

    def _advance(self, tokens_embedded: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
        h, c, values, keys = state
        context, alpha = self.attend(h, values, keys)
        h, c = self.cell(torch.cat([tokens_embedded, context], dim=-1), (h, c))
        return (h, c, values, keys), alpha

    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: logits [B, T-1, V] predicting captions[:, 1:] and attention [B, T-1, N].

        Padded positions (after a caption's end) are computed but ignored by the loss and the regulariser.
        """
        state, words = self.start(features), self.embed(captions[:, :-1])
        hidden, alphas = [], []
        for t in range(words.size(1)):
            state, alpha = self._advance(words[:, t], state)
            hidden.append(state[0])
            alphas.append(alpha)
        return self.out(self.drop(torch.stack(hidden, 1))), torch.stack(alphas, 1)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Log-probabilities [B, V] of the word after ``tokens`` [B], the next state, the attention [B, N]."""
        state, alpha = self._advance(self.embed(tokens), state)
        return F.log_softmax(self.out(state[0]), dim=-1), state, alpha


def attention_penalty(alphas: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Doubly stochastic regulariser: mean over images of sum over cells of (1 - sum over words of alpha)^2."""
    mask = (captions[:, 1:] != PAD).unsqueeze(-1).to(alphas.dtype)
    return ((1 - (alphas * mask).sum(1)) ** 2).sum(-1).mean()
