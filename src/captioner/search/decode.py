"""Caption search on the decoder interface (start / step), for every model family: greedy, beam (and diverse beam),
sampling; ``search`` picks one as a Search asks (its settings checked there).

Conventions shared by all: a caption has at least one word and at most ``max_len`` tokens; its log-probability
counts the words it returns plus <end> when <end> was produced (a caption cut at ``max_len`` has no <end>); its
``score`` is what its list is ordered by: in beam search the log-probability divided by the length penalty
``((5 + words) / 6) ** alpha`` (GNMT), words counted without <end>; elsewhere the log-probability itself.
Rules any search may add (off by default): ``block_ngram`` N rules out a word that would complete an N-gram of words
already in the caption; ``bad_endings`` (word ids) rules out <end> after one of them, and one of them as the last
word of a caption cut at ``max_len``. export/runner.py mirrors all of it in numpy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from captioner.data.vocab import END, PAD, START, UNK, Vocabulary
from captioner.models.decoder import State
from captioner.search.hypotheses import Ended, Hypothesis, per_image, scored_rows, until_end
from captioner.search.settings import Search

NEVER = (PAD, START, UNK)  # tokens no search ever generates; nor <end> first: a caption has a word


class Decoder(Protocol):
    def start(self, features: torch.Tensor) -> State: ...
    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]: ...


CHECK_EVERY = 4  # greedy on a GPU asks whether all captions ended every few steps: each question waits for it


class _Step:
    """``decoder.step`` with what a search may not say next ruled out: <pad>, <start>, <unk>; <end> at the first step;
    and the rules asked for (``block_ngram``, ``bad_endings``, see above). One per search."""

    def __init__(self, decoder: Decoder, device: torch.device, max_len: int, block_ngram: int = 0,
                 bad_endings: Sequence[int] | None = None) -> None:
        self.decoder, self.max_len, self.block = decoder, max_len, block_ngram
        self.never, self.never_first = torch.tensor(NEVER, device=device), torch.tensor((*NEVER, END), device=device)
        self.bad = torch.tensor(sorted(set(bad_endings)), device=device) if bad_endings else None

    def __call__(self, tokens: torch.Tensor, state: State,
                 words: torch.Tensor) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """The next token's log-probabilities after each row's ``words`` so far [rows, t] (the last one: ``tokens``)."""
        log_probs, state, alpha = self.decoder.step(tokens, state)
        log_probs = log_probs.index_fill(1, self.never if words.size(1) else self.never_first, float("-inf"))
        ban = self._banned(words, log_probs.size(1))
        return log_probs if ban is None else log_probs.masked_fill(ban, float("-inf")), state, alpha

    def _banned(self, words: torch.Tensor, vocab: int) -> torch.Tensor | None:
        t, ban = words.size(1), None
        if self.block and t >= self.block:
            ban = repeats(words, self.block, vocab)
        if self.bad is not None:
            ban = torch.zeros(len(words), vocab, dtype=torch.bool, device=words.device) if ban is None else ban
            if t:
                ban[:, END] |= torch.isin(words[:, -1], self.bad)
            if t == self.max_len - 1:  # the caption is cut after this word
                ban[:, self.bad] = True
        return ban


def repeats(words: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """[rows, vocab]: True for each word that would complete an ``n``-gram already in its row of ``words`` [rows, t]."""
    grams = words.unfold(1, n, 1)  # [rows, t - n + 1, n]
    seen = (grams[:, :, :-1] == words[:, None, words.size(1) - n + 1:]).all(-1)  # it starts with the last n-1 words
    hits = torch.zeros(len(words), vocab, dtype=torch.long, device=words.device)
    return hits.scatter_add_(1, grams[:, :, -1], seen.long()) > 0


def _reorder(state: State, rows: torch.Tensor) -> State:
    return tuple(s.index_select(0, rows) for s in state)


@torch.inference_mode()
def search(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary, s: Search) -> list[list[Hypothesis]]:
    """Each image's captions, best first, as ``s`` asks (its max_len set: Search.resolved): greedy, beam, diverse
    beam or sampling."""
    if s.max_len is None:
        raise ValueError("decode.search needs the search's max_len: Search.resolved(the model's max_len)")
    rules = dict(block_ngram=s.block_ngram, bad_endings=vocab.bad_ending_ids() if s.bad_endings else None)
    if s.sample:
        return sample_captions(decoder, features, s.n, s.max_len, s.temperature, s.top_k, s.top_p, s.seed, **rules)
    if s.beam == 1:
        return [[h] for h in greedy(decoder, features, s.max_len, **rules)]
    return beam_search(decoder, features, s.beam, s.max_len, s.length_penalty, **rules, groups=s.groups,
                       diversity=s.diversity)


@torch.inference_mode()
def greedy(decoder: Decoder, features: torch.Tensor, max_len: int = 20, block_ngram: int = 0,
           bad_endings: Sequence[int] | None = None) -> list[Hypothesis]:
    """The most likely word at each step until <end> or ``max_len`` tokens, for each image's features."""
    n, device = features.size(0), features.device
    step, state = _Step(decoder, device, max_len, block_ngram, bad_endings), decoder.start(features)
    tokens = torch.full((n,), START, dtype=torch.long, device=device)
    ids = torch.full((n, max_len), END, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    score = torch.zeros(n, device=device)
    alphas = []
    every = 1 if device.type == "cpu" else CHECK_EVERY  # on CPU a check is cheaper than a wasted step
    for t in range(max_len):
        log_probs, state, alpha = step(tokens, state, ids[:, :t])
        best, tokens = log_probs.max(-1)
        score += best.masked_fill(done, 0.0)
        ids[:, t] = tokens.masked_fill(done, END)
        alphas.append(alpha)
        done |= tokens == END
        if (t + 1) % every == 0 and bool(done.all()):
            break
    out = []
    for i, (row, s) in enumerate(zip(ids.tolist(), score.tolist(), strict=True)):
        words, steps = until_end(row)
        out.append(Hypothesis(words, s, None if alpha is None else torch.stack([a[i] for a in alphas[:steps]]), s))
    return out


@torch.inference_mode()
def beam_search(decoder: Decoder, features: torch.Tensor, beam: int = 3, max_len: int = 20,
                length_penalty: float = 0.0, block_ngram: int = 0, bad_endings: Sequence[int] | None = None,
                groups: int = 1, diversity: float = 0.0) -> list[list[Hypothesis]]:
    """The ``beam`` best captions of each image by normalised score, best first.

    A caption ends when <end> is chosen or at ``max_len`` tokens. The search stops for an image once it holds
    ``beam`` ended captions and no live beam can still beat the worst of them (a live beam's raw score only
    falls; its normalised score is bounded by dividing by the longest possible length's penalty). Beams are
    kept as back-pointers per step; a caption's words and attention are read back only for the captions returned.
    With ``groups`` G > 1, diverse beam search (Vijayakumar et al. 2018): G groups of beam / G beams, each a beam
    search of its own whose choice at a step is penalised by ``diversity`` for each earlier group's beam that chose
    the same word at that step (Hamming diversity); scores stay log-probabilities; a caption two groups found is
    returned once. The settings are as a Search checks them (``groups`` divides ``beam``).
    """
    n, k, kg, device = features.size(0), beam, beam // groups, features.device
    step = _Step(decoder, device, max_len, block_ngram, bad_endings)
    state = _reorder(decoder.start(features), torch.arange(n, device=device).repeat_interleave(k))
    tokens = torch.full((n * k,), START, dtype=torch.long, device=device)
    so_far = torch.empty(n * k, 0, dtype=torch.long, device=device)  # each beam's words, for the rules
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, ::kg] = 0.0  # all beams start identical: keep one a group so the first step yields kg different words
    first_row = torch.arange(0, n * k, k, device=device).unsqueeze(1)
    words, parents, alphas = [], [], []  # per step: each beam's new word and the beam it extends [n, k]; attention
    ended = Ended(n, groups, kg, max_len, length_penalty)
    moved = [False] * len(state)  # state tensors a step has replaced (the rest need no reordering, see below)
    for t in range(max_len):
        log_probs, new, alpha = step(tokens, state, so_far)
        moved = [m or a is not b for m, a, b in zip(moved, new, state, strict=True)]
        state = new
        alphas.append(alpha)
        total = scores.unsqueeze(-1) + log_probs.view(n, k, -1)
        with_end = total[:, :, END].tolist()
        total[:, :, END] = float("-inf")
        scores, beams, tokens = _top(total, groups, diversity)
        words.append(tokens)
        parents.append(beams)
        if ended.offer(t, with_end, scores.tolist()):
            break
        # a tensor no step replaced still holds k equal rows per image (e.g. the attention's values), so
        # reordering beams within each image leaves it as it is
        rows = (beams + first_row).view(-1)
        state = tuple(s.index_select(0, rows) if m else s for s, m in zip(state, moved, strict=True))
        tokens = tokens.view(-1)
        so_far = torch.cat([so_far.index_select(0, rows), tokens.unsqueeze(1)], 1)
    maps = None if alphas[0] is None else torch.stack(alphas)  # [steps, n * k, N]
    return ended.read_back(torch.stack(words).tolist(), torch.stack(parents).tolist(), maps, k)


def _top(total: torch.Tensor, groups: int, diversity: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best beam / ``groups`` extensions of each group's beams in ``total`` [n, k, V] (raw scores), a group's
    choice penalised by ``diversity`` per earlier group's beam with the same word: their raw scores, beams, words."""
    n, k, vocab = total.shape
    if groups == 1:
        scores, flat = total.view(n, -1).topk(k, dim=1)
        return scores, flat // vocab, flat % vocab
    kg, chosen = k // groups, total.new_zeros(n, vocab)
    out = []
    for g in range(groups):
        part = total[:, g * kg:(g + 1) * kg].reshape(n, -1)
        flat = (part - diversity * chosen.repeat(1, kg)).topk(kg, dim=1).indices
        raw = part.gather(1, flat)
        chosen.scatter_add_(1, flat % vocab, (raw > float("-inf")).float())
        out.append((raw, flat // vocab + g * kg, flat % vocab))
    return tuple(torch.cat(x, 1) for x in zip(*out, strict=True))


@torch.inference_mode()
def word_log_probs(decoder: Decoder, features: torch.Tensor, captions: list[list[list[int]]],
                   max_len: int) -> list[list[list[float]]]:
    """Per image and caption (word ids), each token's log-probability as a search scored it: its words, then <end>
    unless the caption has ``max_len`` words (cut, no <end>). All captions of all images in one batched pass."""
    rows = scored_rows(captions, max_len)
    if not rows:
        return [[] for _ in captions]
    device, longest = features.device, max(len(t) for _, t in rows)
    targets = torch.full((len(rows), longest), PAD, dtype=torch.long, device=device)
    for r, (_, tokens) in enumerate(rows):
        targets[r, :len(tokens)] = torch.tensor(tokens, device=device)
    state = _reorder(decoder.start(features), torch.tensor([i for i, _ in rows], device=device))
    tokens, steps = torch.full((len(rows),), START, dtype=torch.long, device=device), []
    for t in range(longest):
        log_probs, state, _ = decoder.step(tokens, state)
        steps.append(log_probs.gather(1, targets[:, t:t + 1]).squeeze(1))
        tokens = targets[:, t]
    return per_image(rows, torch.stack(steps, 1).tolist(), len(captions))


def sample(decoder: Decoder, features: torch.Tensor, n: int = 5, max_len: int = 20, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int | None = None, block_ngram: int = 0,
           bad_endings: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` captions per image drawn from the model, batched: ids [B*n, max_len] (<pad> after <end>) and the
    log-probability of each sampled caption [B*n] (with gradients, for self-critical training).

    Rows i*n .. i*n+n-1 belong to image i. Words are drawn at ``temperature`` from the ``top_k`` likeliest (0: all)
    within the nucleus ``top_p`` (the likeliest words whose probabilities reach it); the log-probability is the
    model's own at temperature 1 over the words a search may say, renormalised: ruled-out words (<unk>, ...) take no
    share, so a self-critical step that lowers a sampled caption cannot move mass onto words that are never drawn
    and so never lowered again (that mass would grow until every sample is improbable). With ``seed`` each
    step draws ``n`` uniforms from numpy's generator, the same for every image, so an image's captions do not depend
    on the batch it is in; without, torch's.
    """
    ids, total, _ = _sample(decoder, features, n, max_len, temperature, top_k, top_p, seed, block_ngram,
                            bad_endings, drawable=True)
    return ids, total


@torch.inference_mode()
def sample_captions(decoder: Decoder, features: torch.Tensor, n: int = 5, max_len: int = 20,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                    block_ngram: int = 0, bad_endings: Sequence[int] | None = None) -> list[list[Hypothesis]]:
    """``sample``'s captions of each image as hypotheses, most likely first (their score: the model's own
    log-probability over every word, as greedy and beam search score)."""
    ids, total, alphas = _sample(decoder, features, n, max_len, temperature, top_k, top_p, seed, block_ngram,
                                 bad_endings)
    out = []
    for first in range(0, len(ids), n):
        hyps = []
        for r in range(first, first + n):
            (words, steps), s = until_end(ids[r].tolist()), float(total[r])
            maps = None if alphas[0] is None else torch.stack([a[r] for a in alphas[:steps]])
            hyps.append(Hypothesis(words, s, maps, s))
        out.append(sorted(hyps, key=lambda h: -h.score))
    return out


def _sample(decoder: Decoder, features: torch.Tensor, n: int, max_len: int, temperature: float, top_k: int,
            top_p: float, seed: int | None, block_ngram: int, bad_endings: Sequence[int] | None,
            drawable: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """``drawable``: the log-probabilities over the words that may be drawn (``sample``), else over every word (the
    model's own, as greedy and beam search score captions)."""
    device = features.device
    step, state = _Step(decoder, device, max_len, block_ngram, bad_endings), decoder.start(features)
    rows = torch.arange(features.size(0), device=device).repeat_interleave(n)
    state = _reorder(state, rows)
    rng = None if seed is None else np.random.default_rng(seed)
    tokens = torch.full((rows.numel(),), START, dtype=torch.long, device=device)
    alive = torch.ones_like(tokens, dtype=torch.bool)
    total = torch.zeros(rows.numel(), device=device)
    steps, alphas = [], []
    for _ in range(max_len):
        words = torch.stack(steps, 1) if steps else tokens[:, None][:, :0]
        log_probs, state, alpha = step(tokens, state, words)
        if drawable:
            log_probs = log_probs.log_softmax(-1)
        tokens = _draw(log_probs.detach(), n, temperature, top_k, top_p, rng)
        total = total + torch.where(alive, log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1), 0.0)
        steps.append(tokens.masked_fill(~alive, PAD))
        alphas.append(alpha)
        alive = alive & (tokens != END)
        if not bool(alive.any()):
            break
    ids = torch.stack(steps, 1)
    return torch.nn.functional.pad(ids, (0, max_len - ids.size(1)), value=PAD), total, alphas


def _draw(log_probs: torch.Tensor, n: int, temperature: float, top_k: int, top_p: float,
          rng: np.random.Generator | None) -> torch.Tensor:
    """One token per row of ``log_probs`` (see ``sample``); with ``rng``, by the inverse CDF of n uniforms a step.

    Probabilities come from a softmax, which subtracts the row's maximum: ``exp`` of log-probabilities underflows to
    all zeros once the model puts nearly all its mass on a ruled-out word (a self-critical run died on that). A row
    with no finite log-probability (every word ruled out, or non-finite weights) draws <end>: its caption's
    log-probability is then not finite, which the training step skips."""
    dead = ~(log_probs.max(-1).values > float("-inf"))  # also NaN
    if bool(dead.any()):
        log_probs = torch.where(dead[:, None], _only(END, log_probs), log_probs)
    if temperature == 1 and not top_k and top_p == 1 and rng is None:
        return torch.multinomial(log_probs.softmax(-1), 1).squeeze(1)  # SCST's draw
    probs = (log_probs.double() / temperature).softmax(-1)
    if top_k:
        ranked = probs.topk(min(top_k, probs.size(1)), -1).values  # best first
        probs = torch.where(probs >= ranked[:, -1:], probs, 0.0)
    if top_p < 1:
        ranked = ranked if top_k else probs.sort(-1, descending=True).values
        before = ranked.cumsum(-1) - ranked  # the mass of the likelier words
        last = (before < top_p * probs.sum(-1, keepdim=True)).sum(-1, keepdim=True) - 1
        probs = torch.where(probs >= ranked.gather(1, last), probs, 0.0)
    if rng is None:
        return torch.multinomial(probs, 1).squeeze(1)
    cdf = probs.cumsum(-1)
    u = torch.from_numpy(np.tile(rng.random(n), len(probs) // n)).to(cdf.device)
    return (cdf <= (u * cdf[:, -1]).unsqueeze(1)).sum(-1).clamp(max=probs.size(1) - 1)


def _only(token: int, like: torch.Tensor) -> torch.Tensor:
    """A row of log-probabilities [1, V] that gives ``token`` all the mass."""
    row = torch.full((1, like.size(1)), float("-inf"), dtype=like.dtype, device=like.device)
    row[0, token] = 0.0
    return row
