"""An ensemble of decoders that share a vocabulary, any mix of families, as one decoder of the start / step
interface: every search (greedy, beam, diverse beam, sampling) runs on it unchanged."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from captioner.models.decoder import State


class Ensemble(nn.Module):
    """Each step the members' log-probabilities averaged, then renormalised (log-softmax of the mean: a normalised
    geometric mean of their distributions); the state is the members' states one after another; the attention is
    the first member's (None when it has none)."""

    def __init__(self, decoders: Sequence[nn.Module]) -> None:
        super().__init__()
        if not decoders:
            raise ValueError("an ensemble needs at least one decoder")
        self.members = nn.ModuleList(decoders)
        self.sizes: list[int] = []  # each member's number of state tensors, known once ``start`` has run

    def start(self, features: torch.Tensor) -> State:
        states = [d.start(features) for d in self.members]
        self.sizes = [len(s) for s in states]
        return tuple(t for s in states for t in s)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        log_probs, new, first = [], [], 0
        for d, size in zip(self.members, self.sizes, strict=True):
            lp, s, alpha = d.step(tokens, state[first:first + size])
            log_probs.append(lp)
            new += s  # the same tensor objects where a member left one unchanged (beam search relies on it)
            if not first:
                attention = alpha
            first += size
        if len(log_probs) == 1:
            return log_probs[0], tuple(new), attention
        return torch.stack(log_probs).mean(0).log_softmax(-1), tuple(new), attention
