"""Caption search on the decoder interface (start / step), for every model family: greedy, beam, sampling.

Conventions shared by all three: a caption is at most ``max_len`` tokens; its score is the log-probability of
the words it returns plus that of ``<end>`` when ``<end>`` was produced (a caption cut at ``max_len`` has no
``<end>``); the length penalty divides by ``((5 + words) / 6) ** alpha`` (GNMT), words counted without ``<end>``.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from captioner.data.vocab import END, PAD, START, UNK
from captioner.models.decoder import State

NEVER = (PAD, START, UNK)  # tokens no search ever generates


class Decoder(Protocol):
    def start(self, features: torch.Tensor) -> State: ...
    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]: ...


class Hypothesis(NamedTuple):
    """A caption: word ids (no <start>/<end>), its score, and per step the attention [steps, N] (or None)."""

    ids: list[int]
    score: float
    attention: torch.Tensor | None = None


def _next(decoder: Decoder, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
    """Log-probabilities of the next word with <pad>, <start> and <unk> ruled out."""
    log_probs, state, alpha = decoder.step(tokens, state)
    return log_probs.index_fill(1, torch.tensor(NEVER, device=log_probs.device), float("-inf")), state, alpha


def _reorder(state: State, rows: torch.Tensor) -> State:
    return tuple(s.index_select(0, rows) for s in state)


def normalise(score: float, words: int, alpha: float) -> float:
    """GNMT length penalty: alpha 0 keeps the raw log-probability, larger alpha favours longer captions."""
    return score / (((5 + words) / 6) ** alpha) if alpha else score


@torch.inference_mode()
def greedy(decoder: Decoder, features: torch.Tensor, max_len: int = 20) -> list[Hypothesis]:
    """The most likely word at each step until <end> or ``max_len`` tokens, for each image's features."""
    state = decoder.start(features)
    n = features.size(0)
    tokens = torch.full((n,), START, dtype=torch.long, device=features.device)
    done = torch.zeros(n, dtype=torch.bool, device=features.device)
    score = torch.zeros(n, device=features.device)
    steps, alphas = [], []
    for _ in range(max_len):
        log_probs, state, alpha = _next(decoder, tokens, state)
        best, tokens = log_probs.max(-1)
        score += best.masked_fill(done, 0.0)
        steps.append(tokens.masked_fill(done, END))
        alphas.append(alpha)
        done |= tokens == END
        if bool(done.all()):
            break
    ids = torch.stack(steps, 1).tolist()
    out = []
    for i, (row, s) in enumerate(zip(ids, score.tolist(), strict=True)):
        words = row[:row.index(END)] if END in row else row
        attention = None if alphas[0] is None else torch.stack([a[i] for a in alphas[:len(words) + (END in row)]])
        out.append(Hypothesis(words, s, attention))
    return out


@torch.inference_mode()
def beam_search(decoder: Decoder, features: torch.Tensor, beam: int = 3, max_len: int = 20,
                length_penalty: float = 0.0) -> list[list[Hypothesis]]:
    """The ``beam`` best captions of each image by normalised score, best first.

    A caption ends when <end> is chosen or at ``max_len`` tokens. The search stops for an image once it holds
    ``beam`` ended captions and no live beam can still beat the worst of them (a live beam's raw score only
    falls; its normalised score is bounded by dividing by the longest possible length's penalty).
    """
    if beam < 1:
        raise ValueError(f"beam size must be >= 1, got {beam}")
    n, k, device = features.size(0), beam, features.device
    state = _reorder(decoder.start(features), torch.arange(n, device=device).repeat_interleave(k))
    tokens = torch.full((n * k,), START, dtype=torch.long, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step yields k different words
    seqs = torch.zeros(n, k, 0, dtype=torch.long, device=device)
    history: torch.Tensor | None = None  # attention so far [n, k, steps, N]
    kept: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(n)]
    done = [False] * n

    def keep(i: int, ids: list[int], raw: float, attention: torch.Tensor | None) -> None:
        kept[i].append((normalise(raw, len(ids), length_penalty), Hypothesis(ids, raw, attention)))
        kept[i].sort(key=lambda x: -x[0])
        del kept[i][k:]

    for t in range(max_len):
        log_probs, state, alpha = _next(decoder, tokens, state)
        if alpha is not None:
            step = alpha.view(n, k, 1, -1)
            history = step if history is None else torch.cat([history, step], 2)
        total = scores.unsqueeze(-1) + log_probs.view(n, k, -1)
        ended = total[:, :, END].tolist()
        total[:, :, END] = float("-inf")
        vocab = total.size(-1)
        top, flat = total.view(n, -1).topk(k, dim=1)
        for i in range(n):
            if done[i]:
                continue
            for b in range(k):
                if ended[i][b] > float("-inf"):
                    keep(i, seqs[i, b].tolist(), ended[i][b], None if history is None else history[i, b])
        beams = flat // vocab
        seqs = torch.cat([seqs.gather(1, beams.unsqueeze(-1).expand(-1, -1, seqs.size(2))),
                          (flat % vocab).unsqueeze(-1)], 2)
        if history is not None:
            history = history.gather(1, beams.view(n, k, 1, 1).expand(-1, -1, *history.shape[2:]))
        scores, tokens = top, (flat % vocab).view(-1)
        if t == max_len - 1:  # the live beams are cut at max_len tokens: they end here, without <end>
            for i in range(n):
                for b in range(k):
                    if not done[i] and scores[i, b] > float("-inf"):
                        keep(i, seqs[i, b].tolist(), float(scores[i, b]), None if history is None else history[i, b])
            break
        bound = (scores / (((5 + max_len) / 6) ** length_penalty) if length_penalty else scores).max(1).values
        for i in range(n):
            done[i] = done[i] or (len(kept[i]) == k and kept[i][-1][0] >= float(bound[i]))
        if all(done):
            break
        state = _reorder(state, (beams + torch.arange(n, device=device).unsqueeze(1) * k).view(-1))
    return [[h for _, h in row] for row in kept]


def sample(decoder: Decoder, features: torch.Tensor, n: int = 5,
           max_len: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` captions per image drawn from the model, batched: ids [B*n, max_len] (<pad> after <end>) and the
    log-probability of each sampled caption [B*n] (with gradients, for self-critical training).

    Rows i*n .. i*n+n-1 belong to image i.
    """
    state = decoder.start(features)
    rows = torch.arange(features.size(0), device=features.device).repeat_interleave(n)
    state = _reorder(state, rows)
    tokens = torch.full((rows.numel(),), START, dtype=torch.long, device=features.device)
    alive = torch.ones_like(tokens, dtype=torch.bool)
    total = torch.zeros(rows.numel(), device=features.device)
    steps = []
    for _ in range(max_len):
        log_probs, state, _ = _next(decoder, tokens, state)
        tokens = torch.multinomial(log_probs.detach().exp(), 1).squeeze(1)
        total = total + torch.where(alive, log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1), 0.0)
        steps.append(tokens.masked_fill(~alive, PAD))
        alive = alive & (tokens != END)
        if not bool(alive.any()):
            break
    ids = torch.stack(steps, 1)
    return torch.nn.functional.pad(ids, (0, max_len - ids.size(1)), value=PAD), total
