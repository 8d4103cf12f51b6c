"""Show and Tell: the pooled image embedding is the LSTM's first input step, then the caption's word embeddings.

Every decoder family speaks one interface, on which decode.py searches and export.py traces:
``start(features) -> state`` and ``step(tokens, state) -> (log-probs, state, attention or None)``; a state is a
tuple of tensors whose first dimension is the batch, so a search reorders it with ``index_select(0, rows)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from captioner.data.vocab import PAD

State = tuple[torch.Tensor, ...]


def batch_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a BatchNorm1d; a one-caption training batch has no batch statistics, so it uses the running ones."""
    if isinstance(norm, nn.BatchNorm1d) and norm.training and x.size(0) == 1:
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False,
                            eps=norm.eps)
    return norm(x)


class ShowTell(nn.Module):
    """Mean of the grid -> standardise -> Linear (+BatchNorm) -> LSTM first step -> Linear over the vocabulary.

    Frozen trunks (random ones most) give features with a large common offset; standardising them first (a
    BatchNorm without affine) lets the embedding learn quickly.
    """

    def __init__(self, vocab_size: int, feature_size: int, embed_size: int = 256, hidden_size: int = 512,
                 num_layers: int = 1, dropout: float = 0.0, batch_norm: bool = True) -> None:
        super().__init__()
        self.standardize = nn.BatchNorm1d(feature_size, affine=False)
        self.project = nn.Linear(feature_size, embed_size)
        self.norm = nn.BatchNorm1d(embed_size, momentum=0.01) if batch_norm else nn.Identity()
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=PAD)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)

    def image(self, features: torch.Tensor) -> torch.Tensor:
        """Image embedding [B, E] of grid features [B, N, C] (their mean is the CNN's average pool)."""
        pooled = batch_norm(self.standardize, features.float().mean(1))
        return batch_norm(self.norm, self.project(pooled))

    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Teacher forcing: logits [B, T-1, V] predicting captions[:, 1:] (captions start with <start>).

        ``lengths`` (with padded captions) packs the sequence so padding is never run through the LSTM.
        """
        x = torch.cat([self.image(features).unsqueeze(1), self.embed(captions[:, :-1])], dim=1)
        if lengths is None:
            h, _ = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.size(1))
        return self.out(self.drop(h[:, 1:])), None

    def start(self, features: torch.Tensor) -> State:
        """(h, c) [B, layers, H] after reading the image embedding."""
        h, c = self.lstm(self.image(features).unsqueeze(1))[1]
        return h.transpose(0, 1), c.transpose(0, 1)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        """Log-probabilities [B, V] of the word after ``tokens`` [B], the next state, no attention."""
        h, c = (s.transpose(0, 1).contiguous() for s in state)
        out, (h, c) = self.lstm(self.embed(tokens).unsqueeze(1), (h, c))
        return F.log_softmax(self.out(out[:, 0]), dim=-1), (h.transpose(0, 1), c.transpose(0, 1)), None


def caption_loss(logits: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next-word predictions, ignoring padding."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), captions[:, 1:].reshape(-1), ignore_index=PAD)
