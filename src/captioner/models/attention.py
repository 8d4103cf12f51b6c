"""Show, Attend and Tell (Xu et al. 2015): soft additive attention over the encoder's G x G grid at every word,
from the LSTM state after it has read the word (Lu et al. 2017)."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from captioner.data.vocab import PAD
from captioner.models.decoder import Affines, State, lstm_cell
from captioner.models.grid import GridValues, additive_weights

SCORES = ("additive", "dot")  # ModelConfig.attention_score
CHUNK = 2**24  # teacher forcing attends a batch's words in chunks of at most this many numbers ([B, words, N, A]),
# each recomputed in the backward pass: COCO at batch 512 (7x7 x 256, 25 words) peaks at +1.3 GB, not +2.9 GB


class ShowAttendTell(GridValues):
    """Grid -> values (Linear); per word: LSTM(word, mean value), Bahdanau attention from its h, sigmoid-gated
    context, Linear(h + context).

    Attention reads the LSTM state *after* it has read the last word (Lu et al. 2017's spatial attention; Xu et al.
    query the state before it): the context for the word after "blue" can then look for the blue object, where
    Xu's order mixes a colour and another object's shape (measured on the demo's scenes, 8 epochs: captions naming
    every object 78-83% -> 87-89%). The LSTM's input is the word and the image's mean value, not the last context,
    so teacher forcing runs the LSTM over a whole caption in one call (an epoch 10 -> 6.5 s on the demo). The values
    are a projection of the standardised grid (``context_size`` wide) plus a learned embedding of each cell's
    place: a CNN's cell features hardly say where they are, so without it the context could not tell left from right.

    ``score`` "additive" is Bahdanau's w . tanh(keys + W h); "dot" is Luong's "general" score (W h) . value / sqrt(D):
    one [B, T, D] x [B, D, N] product per batch, no [B, T, N, A] tensor through tanh (the additive score was ~45% of
    a training step), no keys (``attention_size`` unused; a key projection would add nothing, as W_k^T W_q is one
    more D x H matrix). The state keeps its layout: its keys are the values.
    """

    def __init__(self, vocab_size: int, feature_size: int, embed_size: int = 256, hidden_size: int = 512,
                 attention_size: int = 256, context_size: int = 256, dropout: float = 0.0, cells: int = 49,
                 score: str = "additive") -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown attention score {score!r}; choose one of {', '.join(SCORES)}")
        self.additive = score == "additive"
        self.init_grid(feature_size, context_size, cells)
        if self.additive:  # keys and score made where they always were: a seed gives the same additive model
            self.keys = nn.Linear(context_size, attention_size)
        self.init_h = nn.Linear(context_size, hidden_size)
        self.init_c = nn.Linear(context_size, hidden_size)
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=PAD)
        self.lstm = nn.LSTM(embed_size + context_size, hidden_size, batch_first=True)
        self.query = nn.Linear(hidden_size, attention_size if self.additive else context_size)
        if self.additive:
            self.score = nn.Linear(attention_size, 1)
        self.gate = nn.Linear(hidden_size, context_size)
        self.mix = nn.Linear(context_size, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)
        self.affines = Affines(self._affines)

    def start(self, features: torch.Tensor) -> State:
        """(h, c, mean value [B, D], values [B, N, D], keys [B, N, A]; the values for "dot") from grid features
        [B, N, C]."""
        values = self.grid_values(features)
        mean = values.mean(1)
        keys = self.keys(values) if self.additive else values
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), mean, values, keys

    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: the output layer's inputs [B, T-1, H] predicting captions[:, 1:] (``caption_loss`` applies
        ``self.out``) and the attention [B, T-1, N].

        Padded positions (after a caption's end) are computed but ignored by the loss and the regulariser.
        """
        h, c, mean, values, keys = self.start(features)
        words = self.embed(captions[:, :-1])
        x = torch.cat([words, mean.unsqueeze(1).expand(-1, words.size(1), -1)], 2)
        h, _ = self.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)))
        query, gate = F.linear(h, torch.cat([self.query.weight, self.gate.weight]),  # one product over h, not two
                               torch.cat([self.query.bias, self.gate.bias])).split(
            [self.query.out_features, self.gate.out_features], -1)
        alpha = self._attend(keys, query)
        context = torch.sigmoid(gate) * torch.bmm(alpha, values)
        return self.drop(h + self.mix(context)), alpha

    def _advance(self, tokens: torch.Tensor, state: State, affines: tuple) -> tuple[torch.Tensor, State, torch.Tensor]:
        h, c, mean, values, keys = state
        lstm, query_gate, mix, _ = affines
        h, c = lstm_cell(torch.cat([self.embed(tokens), mean, h], 1), c, lstm)
        query, gate = query_gate(h).split([self.query.out_features, self.gate.out_features], 1)
        alpha = self._attend(keys, query.unsqueeze(1)).squeeze(1)
        context = torch.sigmoid(gate) * torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
        return h + mix(context), (h, c, mean, values, keys), alpha

    def _attend(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Attention weights [B, T, N] from the cells' keys [B, N, A] and the queries [B, T, A]."""
        if not self.additive:
            return F.softmax(torch.bmm(query, keys.transpose(1, 2)) * keys.size(-1) ** -0.5, dim=-1)
        words = max(1, CHUNK // keys.numel())
        if query.size(1) <= words:
            return self._weights(keys, query)
        weights = partial(checkpoint, self._weights, use_reentrant=False) if torch.is_grad_enabled() else self._weights
        return torch.cat([weights(keys, q) for q in query.split(words, 1)], 1)

    def _weights(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return additive_weights(keys, query, self.score)

    def _affines(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The LSTM's gates of [word; mean; h], query and gate (both read h), the context's mix, the output layer."""
        w_ih, w_hh, b_ih, b_hh = self.lstm.all_weights[0]
        return [(torch.cat([w_ih, w_hh], 1), b_ih + b_hh),
                (torch.cat([self.query.weight, self.gate.weight]), torch.cat([self.query.bias, self.gate.bias])),
                (self.mix.weight, self.mix.bias), (self.out.weight, self.out.bias)]


def attention_penalty(alphas: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Doubly stochastic regulariser: mean over images of sum over cells of (1 - sum over words of alpha)^2."""
    mask = (captions[:, 1:] != PAD).unsqueeze(-1).to(alphas.dtype)
    return ((1 - (alphas * mask).sum(1)) ** 2).sum(-1).mean()
