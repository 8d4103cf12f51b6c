"""Knowing When to Look (Lu et al. 2017): attention over the grid and a visual sentinel, so that a word the language
model alone can predict ("of", "a" after "in front") need not look at the image."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from captioner.data.vocab import PAD
from captioner.models.decoder import Affines, State
from captioner.models.grid import GridValues, additive_scores


class AdaptiveAttention(GridValues):
    """Grid -> values; per word: LSTM(word, mean value) and its sentinel s = sigmoid(W [x; h_prev]) * tanh(c);
    attention from the new h over the cells' values and the sentinel's (one softmax over N + 1); Linear(h + context).

    The share the softmax gives the sentinel is Lu et al.'s gate beta: context = beta * sentinel + (1 - beta) *
    visual context. The attention map a step returns is the visual part alone, renormalised over the cells (each map
    sums to 1, as the other families'). Values and the LSTM's input are those of models/attention.py.
    """

    def __init__(self, vocab_size: int, feature_size: int, embed_size: int = 256, hidden_size: int = 512,
                 attention_size: int = 256, context_size: int = 256, dropout: float = 0.0, cells: int = 49) -> None:
        super().__init__()
        self.init_grid(feature_size, context_size, cells)
        self.keys = nn.Linear(context_size, attention_size)
        self.init_h = nn.Linear(context_size, hidden_size)
        self.init_c = nn.Linear(context_size, hidden_size)
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=PAD)
        self.lstm = nn.LSTM(embed_size + context_size, hidden_size, batch_first=True)
        self.sentinel_gate = nn.Linear(embed_size + context_size + hidden_size, hidden_size)
        self.sentinel = nn.Linear(hidden_size, context_size)  # the sentinel as a value among the cells'
        self.query = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1)
        self.mix = nn.Linear(context_size, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)
        self.affines = Affines(self._affines)

    def start(self, features: torch.Tensor) -> State:
        """(h, c, mean value [B, D], values [B, N, D], keys [B, N, A]) from grid features [B, N, C]."""
        values = self.grid_values(features)
        mean = values.mean(1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), mean, values, self.keys(values)

    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: the output layer's inputs [B, T-1, H] predicting captions[:, 1:] and the attention
        [B, T-1, N]; padded positions are computed but ignored by the loss.

        The LSTM's input does not wait for the attention, so it runs over the whole caption in one call; its memory
        cells (for the sentinel) follow from its gates recomputed at once and an elementwise scan over the words.
        """
        h0, c, mean, values, keys = self.start(features)
        words = self.embed(captions[:, :-1])
        x = torch.cat([words, mean.unsqueeze(1).expand(-1, words.size(1), -1)], 2)
        h, _ = self.lstm(x, (h0.unsqueeze(0), c.unsqueeze(0)))
        weight, bias = self._affines()[0]  # the live parameters: the search's packed copies take [rows, in] only
        i, f, g, _, s = F.linear(torch.cat([x, torch.cat([h0.unsqueeze(1), h[:, :-1]], 1)], 2), weight,
                                 bias).chunk(5, 2)
        forget, write = torch.sigmoid(f), torch.sigmoid(i) * torch.tanh(g)
        cells = []
        for t in range(words.size(1)):
            c = forget[:, t] * c + write[:, t]
            cells.append(c)
        s_value = self.sentinel(torch.sigmoid(s) * torch.tanh(torch.stack(cells, 1)))  # [B, T, D]
        q = self.query(h)
        scores = torch.cat([additive_scores(keys, q, self.score),
                            self.score(torch.tanh(self.keys(s_value) + q))], 2)  # [B, T, N + 1]
        weights = F.softmax(scores, -1)
        context = torch.bmm(weights[..., :-1], values) + weights[..., -1:] * s_value
        return self.drop(h + self.mix(context)), F.softmax(scores[..., :-1], -1)

    def _advance(self, tokens: torch.Tensor, state: State, affines: tuple) -> tuple[torch.Tensor, State, torch.Tensor]:
        h, c, mean, values, keys = state
        gates, sentinel, key, query, mix, _ = affines
        i, f, g, o, s = gates(torch.cat([self.embed(tokens), mean, h], 1)).chunk(5, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        s_value = sentinel(torch.sigmoid(s) * torch.tanh(c))  # [B, D]
        q = query(h).unsqueeze(1)
        scores = torch.cat([additive_scores(keys, q, self.score), additive_scores(key(s_value).unsqueeze(1), q,
                                                                                  self.score)], 2).squeeze(1)
        weights = F.softmax(scores, -1)  # [B, N + 1]: the last is the sentinel's share, beta
        context = torch.bmm(weights[:, None, :-1], values).squeeze(1) + weights[:, -1:] * s_value
        return h + mix(context), (h, c, mean, values, keys), F.softmax(scores[:, :-1], -1)

    def _affines(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The LSTM's gates and the sentinel's gate (all read [word; mean; h]), the sentinel's value and key, the
        query, the context's mix, the output layer."""
        w_ih, w_hh, b_ih, b_hh = self.lstm.all_weights[0]
        return [(torch.cat([torch.cat([w_ih, w_hh], 1), self.sentinel_gate.weight]),
                 torch.cat([b_ih + b_hh, self.sentinel_gate.bias])),
                (self.sentinel.weight, self.sentinel.bias), (self.keys.weight, self.keys.bias),
                (self.query.weight, self.query.bias), (self.mix.weight, self.mix.bias),
                (self.out.weight, self.out.bias)]
