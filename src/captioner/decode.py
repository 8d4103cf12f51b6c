"""Caption search on the decoder interface (start / step), for every model family: greedy, beam, sampling.

Conventions shared by all three: a caption has at least one word and at most ``max_len`` tokens; its score is the
log-probability of the words it returns plus that of ``<end>`` when ``<end>`` was produced (a caption cut at
``max_len`` has no ``<end>``); the length penalty divides by ``((5 + words) / 6) ** alpha`` (GNMT), words counted
without ``<end>``.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from captioner.data.vocab import END, PAD, START, UNK
from captioner.models.decoder import State

NEVER = (PAD, START, UNK)  # tokens no search ever generates; nor <end> first: a caption has a word
Kept = tuple[float, float, int, int, bool]  # a beam's ended caption: normalised and raw score, last step, beam, <end>


class Decoder(Protocol):
    def start(self, features: torch.Tensor) -> State: ...
    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]: ...


class Hypothesis(NamedTuple):
    """A caption: word ids (no <start>/<end>), its score, and per step the attention [steps, N] (or None)."""

    ids: list[int]
    score: float
    attention: torch.Tensor | None = None


CHECK_EVERY = 4  # greedy on a GPU asks whether all captions ended every few steps: each question waits for it


class _Step:
    """``decoder.step`` with <pad>, <start> and <unk> ruled out, and <end> at the first step (one per search)."""

    def __init__(self, decoder: Decoder, device: torch.device) -> None:
        self.decoder, self.first = decoder, True
        self.never, self.never_first = torch.tensor(NEVER, device=device), torch.tensor((*NEVER, END), device=device)

    def __call__(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        log_probs, state, alpha = self.decoder.step(tokens, state)
        never, self.first = self.never_first if self.first else self.never, False
        return log_probs.index_fill(1, never, float("-inf")), state, alpha


def _reorder(state: State, rows: torch.Tensor) -> State:
    return tuple(s.index_select(0, rows) for s in state)


def normalise(score: float, words: int, alpha: float) -> float:
    """GNMT length penalty: alpha 0 keeps the raw log-probability, larger alpha favours longer captions."""
    return score / (((5 + words) / 6) ** alpha) if alpha else score


@torch.inference_mode()
def greedy(decoder: Decoder, features: torch.Tensor, max_len: int = 20) -> list[Hypothesis]:
    """The most likely word at each step until <end> or ``max_len`` tokens, for each image's features."""
    n, device = features.size(0), features.device
    step, state = _Step(decoder, device), decoder.start(features)
    tokens = torch.full((n,), START, dtype=torch.long, device=device)
    ids = torch.full((n, max_len), END, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    score = torch.zeros(n, device=device)
    alphas = []
    every = 1 if device.type == "cpu" else CHECK_EVERY  # on CPU a check is cheaper than a wasted step
    for t in range(max_len):
        log_probs, state, alpha = step(tokens, state)
        best, tokens = log_probs.max(-1)
        score += best.masked_fill(done, 0.0)
        ids[:, t] = tokens.masked_fill(done, END)
        alphas.append(alpha)
        done |= tokens == END
        if (t + 1) % every == 0 and bool(done.all()):
            break
    out = []
    for i, (row, s) in enumerate(zip(ids.tolist(), score.tolist(), strict=True)):
        words = row[:row.index(END)] if END in row else row
        attention = None if alpha is None else torch.stack([a[i] for a in alphas[:len(words) + (END in row)]])
        out.append(Hypothesis(words, s, attention))
    return out


@torch.inference_mode()
def beam_search(decoder: Decoder, features: torch.Tensor, beam: int = 3, max_len: int = 20,
                length_penalty: float = 0.0) -> list[list[Hypothesis]]:
    """The ``beam`` best captions of each image by normalised score, best first.

    A caption ends when <end> is chosen or at ``max_len`` tokens. The search stops for an image once it holds
    ``beam`` ended captions and no live beam can still beat the worst of them (a live beam's raw score only
    falls; its normalised score is bounded by dividing by the longest possible length's penalty). Beams are
    kept as back-pointers per step; a caption's words and attention are read back only for the captions returned.
    """
    if beam < 1:
        raise ValueError(f"beam size must be >= 1, got {beam}")
    n, k, device = features.size(0), beam, features.device
    step = _Step(decoder, device)
    state = _reorder(decoder.start(features), torch.arange(n, device=device).repeat_interleave(k))
    tokens = torch.full((n * k,), START, dtype=torch.long, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step yields k different words
    first_row = torch.arange(0, n * k, k, device=device).unsqueeze(1)
    words, parents, alphas = [], [], []  # per step: each beam's new word and the beam it extends [n, k]; attention
    kept: list[list[Kept]] = [[] for _ in range(n)]  # best first
    done = [False] * n
    moved = [False] * len(state)  # state tensors a step has replaced (the rest need no reordering, see below)

    def keep(i: int, raw: float, last: int, b: int, end: bool) -> None:
        """Offer beam ``b`` as it stood after step ``last`` (+ <end> if ``end``) to image ``i``'s best ``k``."""
        score = normalise(raw, last + 1, length_penalty)
        if len(kept[i]) < k or score > kept[i][-1][0]:  # a tie with the worst kept one would be dropped
            kept[i].append((score, raw, last, b, end))
            kept[i].sort(key=lambda x: -x[0])
            del kept[i][k:]

    for t in range(max_len):
        log_probs, new, alpha = step(tokens, state)
        moved = [m or a is not b for m, a, b in zip(moved, new, state, strict=True)]
        state = new
        alphas.append(alpha)
        total = scores.unsqueeze(-1) + log_probs.view(n, k, -1)
        ended = total[:, :, END].tolist()
        total[:, :, END] = float("-inf")
        vocab = total.size(-1)
        scores, flat = total.view(n, -1).topk(k, dim=1)
        beams, tokens = flat // vocab, flat % vocab
        words.append(tokens)
        parents.append(beams)
        for i in range(n):
            for b in range(k):
                if not done[i] and ended[i][b] > float("-inf"):
                    keep(i, ended[i][b], t - 1, b, True)
        if t == max_len - 1:  # the live beams are cut at max_len tokens: they end here, without <end>
            for i, row in enumerate(scores.tolist()):
                for b, raw in enumerate(row):
                    if not done[i] and raw > float("-inf"):
                        keep(i, raw, t, b, False)
            break
        best = scores.max(1).values.tolist()
        done = [d or (len(kept[i]) == k and kept[i][-1][0] >= normalise(best[i], max_len, length_penalty))
                for i, d in enumerate(done)]
        if all(done):
            break
        # a tensor no step replaced still holds k equal rows per image (e.g. the attention's values), so
        # reordering beams within each image leaves it as it is
        rows = (beams + first_row).view(-1)
        state = tuple(s.index_select(0, rows) if m else s for s, m in zip(state, moved, strict=True))
        tokens = tokens.view(-1)
    return _read_back(kept, torch.stack(words).tolist(), torch.stack(parents).tolist(), alphas, k)


def _read_back(kept: list[list[Kept]], words: list, parents: list, alphas: list[torch.Tensor | None],
               k: int) -> list[list[Hypothesis]]:
    """The kept captions' words and attention maps, following the back-pointers from their last step."""
    maps = None if alphas[0] is None else torch.stack(alphas)  # [steps, n * k, N]
    out = []
    for i, row in enumerate(kept):
        hyps = []
        for _, raw, last, b, end in row:
            ids, cells = [], [(last + 1, i * k + b)] if end else []  # <end>'s attention map was taken on beam b
            for t in range(last, -1, -1):
                parent = parents[t][i][b]
                ids.append(words[t][i][b])
                cells.append((t, i * k + parent))
                b = parent
            steps, rows = zip(*reversed(cells), strict=True)
            hyps.append(Hypothesis(ids[::-1], raw, None if maps is None else maps[list(steps), list(rows)]))
        out.append(hyps)
    return out


def sample(decoder: Decoder, features: torch.Tensor, n: int = 5,
           max_len: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` captions per image drawn from the model, batched: ids [B*n, max_len] (<pad> after <end>) and the
    log-probability of each sampled caption [B*n] (with gradients, for self-critical training).

    Rows i*n .. i*n+n-1 belong to image i.
    """
    step, state = _Step(decoder, features.device), decoder.start(features)
    rows = torch.arange(features.size(0), device=features.device).repeat_interleave(n)
    state = _reorder(state, rows)
    tokens = torch.full((rows.numel(),), START, dtype=torch.long, device=features.device)
    alive = torch.ones_like(tokens, dtype=torch.bool)
    total = torch.zeros(rows.numel(), device=features.device)
    steps = []
    for _ in range(max_len):
        log_probs, state, _ = step(tokens, state)
        tokens = torch.multinomial(log_probs.detach().exp(), 1).squeeze(1)
        total = total + torch.where(alive, log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1), 0.0)
        steps.append(tokens.masked_fill(~alive, PAD))
        alive = alive & (tokens != END)
        if not bool(alive.any()):
            break
    ids = torch.stack(steps, 1)
    return torch.nn.functional.pad(ids, (0, max_len - ids.size(1)), value=PAD), total
