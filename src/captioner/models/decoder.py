"""LSTM caption decoder: the image embedding is the first input step, then the caption's word embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from captioner.data.vocab import PAD

State = tuple[torch.Tensor, torch.Tensor]


class Decoder(nn.Module):
    """Embedding -> LSTM -> Linear over the vocabulary (Show and Tell)."""

    def __init__(self, vocab_size: int, embed_size: int = 256, hidden_size: int = 512, num_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=PAD)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, image: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: logits [B, T-1, V] predicting captions[:, 1:] (captions start with <start>).

        ``lengths`` (with padded captions) packs the sequence so padding is never run through the LSTM.
        """
        x = torch.cat([image.unsqueeze(1), self.embed(captions[:, :-1])], dim=1)
        if lengths is None:
            h, _ = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.size(1))
        return self.out(self.drop(h[:, 1:]))

    def start(self, image: torch.Tensor) -> State:
        """LSTM state after reading the image embedding [B, E]."""
        return self.lstm(image.unsqueeze(1))[1]

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One decoding step: log-probabilities [B, V] of the next word after ``tokens`` [B]."""
        h, state = self.lstm(self.embed(tokens).unsqueeze(1), state)
        return F.log_softmax(self.out(h[:, 0]), dim=-1), state


def caption_loss(logits: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next-word predictions, ignoring padding."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), captions[:, 1:].reshape(-1), ignore_index=PAD)
