"""Bottom-Up and Top-Down attention's decoder (Anderson et al. 2018) over the encoder's G x G grid: an attention
LSTM decides where to look, a language LSTM says the word."""
from __future__ import annotations

import torch
from torch import nn

from captioner.data.vocab import PAD
from captioner.models.decoder import Affines, State, lstm_cell
from captioner.models.grid import GridValues, additive_weights, teacher_force


class TopDown(GridValues):
    """Grid -> values; per word: attention LSTM([language h; mean value; word]), Bahdanau attention from its h over
    the values, language LSTM([context; attention h]), Linear over the vocabulary from the language h.

    Both LSTMs start from zeros, as in the paper: the mean value reaches the attention LSTM at every step. Each step's
    attention LSTM reads the language LSTM's state from the step before, so teacher forcing runs step by step.
    """

    def __init__(self, vocab_size: int, feature_size: int, embed_size: int = 256, hidden_size: int = 512,
                 attention_size: int = 256, context_size: int = 256, dropout: float = 0.0, cells: int = 49) -> None:
        super().__init__()
        self.init_grid(feature_size, context_size, cells)
        self.keys = nn.Linear(context_size, attention_size)
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=PAD)
        self.attention_lstm = nn.LSTM(hidden_size + context_size + embed_size, hidden_size)
        self.language_lstm = nn.LSTM(context_size + hidden_size, hidden_size)
        self.query = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)
        self.affines = Affines(self._affines)

    def start(self, features: torch.Tensor) -> State:
        """(attention h, c, language h, c [B, H], mean value [B, D], values [B, N, D], keys [B, N, A])."""
        values = self.grid_values(features)
        h1, c1, h2, c2 = (values.new_zeros(values.size(0), self.out.in_features) for _ in range(4))
        return h1, c1, h2, c2, values.mean(1), values, self.keys(values)

    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: the output layer's inputs [B, T-1, H] predicting captions[:, 1:] and the attention
        [B, T-1, N]; padded positions are computed but ignored by the loss."""
        return teacher_force(self, features, captions)

    def _advance(self, tokens: torch.Tensor, state: State, affines: tuple) -> tuple[torch.Tensor, State, torch.Tensor]:
        h1, c1, h2, c2, mean, values, keys = state
        attend, query, speak, _ = affines
        h1, c1 = lstm_cell(torch.cat([h2, mean, self.embed(tokens), h1], 1), c1, attend)
        alpha = additive_weights(keys, query(h1).unsqueeze(1), self.score).squeeze(1)
        context = torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
        h2, c2 = lstm_cell(torch.cat([context, h1, h2], 1), c2, speak)
        return h2, (h1, c1, h2, c2, mean, values, keys), alpha

    def _affines(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The attention LSTM's gates, the query, the language LSTM's gates, the output layer."""
        def gates(lstm: nn.LSTM) -> tuple[torch.Tensor, torch.Tensor]:
            w_ih, w_hh, b_ih, b_hh = lstm.all_weights[0]
            return torch.cat([w_ih, w_hh], 1), b_ih + b_hh

        return [gates(self.attention_lstm), (self.query.weight, self.query.bias), gates(self.language_lstm),
                (self.out.weight, self.out.bias)]
