"""What decode.py (torch) and export/runner.py (numpy) share, torch-free: a search's hypotheses and the captions made of
them, beam search's kept captions and stopping rule, and reading a caption back from the beam's back-pointers.
Attention maps stay in the caller's array type (torch.Tensor or np.ndarray): only indexing is done here."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from captioner.data.vocab import END, Vocabulary

Kept = tuple[float, float, int, int, bool]  # a beam's ended caption: normalised and raw score, last step, beam, <end>


class Hypothesis(NamedTuple):
    """A caption: word ids (no <start>/<end>), the score its list is ordered by, per step the attention [steps, N]
    (or None) and its log-probability."""

    ids: list[int]
    score: float
    attention: Any
    log_prob: float


@dataclass
class Caption:
    """One caption: its text, the score its list is ordered by (beam: length-normalised), its log-probability,
    per-word attention and its words (the text joins them as the language writes: Chinese without spaces)."""

    text: str
    score: float
    log_prob: float
    attention: Any = None  # [tokens, G, G] (torch or numpy): a map per word (+ <end> when produced)
    tokens: list[str] | None = None  # with ``word_scores``: the words, then <end> when produced
    word_log_probs: list[float] | None = None  # with ``word_scores``: each token's log-probability (they sum to
    # log_prob)
    words: tuple[str, ...] = ()


def captions(vocab: Vocabulary, rows: list[list[Hypothesis]], per_word: list[list[list[float]]] | None,
             grid_maps: Callable[[Any], Any]) -> list[list[Caption]]:
    """Per image, its hypotheses as Captions; ``per_word``: each one's token log-probabilities (word_scores);
    ``grid_maps`` turns a hypothesis' attention [steps, N] into maps [steps, G, G]."""
    per_word = per_word or [[None] * len(row) for row in rows]
    return [[Caption(vocab.decode(h.ids), h.score, h.log_prob,
                     None if h.attention is None else grid_maps(h.attention),
                     None if lps is None else [vocab.itos[i] for i in h.ids] + ["<end>"] * (len(lps) > len(h.ids)),
                     lps, tuple(vocab.words(h.ids)))
             for h, lps in zip(row, lp_row, strict=True)] for row, lp_row in zip(rows, per_word, strict=True)]


def until_end(row: list[int]) -> tuple[list[int], int]:
    """A row of generated tokens cut at its first <end>: its words, and the steps they took (with <end>'s)."""
    words = row[:row.index(END)] if END in row else row
    return words, len(words) + (END in row)


def normalise(score: float, words: int, alpha: float) -> float:
    """GNMT length penalty: alpha 0 keeps the raw log-probability, larger alpha favours longer captions."""
    return score / (((5 + words) / 6) ** alpha) if alpha else score


class Ended:
    """Beam search's ended captions, per image and group the best ``per_group`` by normalised score, and its stopping
    rule: an image is done once each group holds ``per_group`` of them and no live beam can still beat its worst (a
    live beam's raw score only falls; its normalised score is bounded by the longest possible length's penalty)."""

    def __init__(self, images: int, groups: int, per_group: int, max_len: int, length_penalty: float) -> None:
        self.kept: list[list[list[Kept]]] = [[[] for _ in range(groups)] for _ in range(images)]
        self.done = [False] * images
        self.per_group, self.max_len, self.alpha = per_group, max_len, length_penalty

    def offer(self, t: int, ended: list[list[float]], live: list[list[float]]) -> bool:
        """After step ``t``: each beam's raw score with <end> (``ended`` [images][beams], the beam as it stood after
        step t - 1) and the live beams' (``live``, which end here, cut, at the last step). True once all are done."""
        last = t == self.max_len - 1
        for i, (with_end, cut) in enumerate(zip(ended, live, strict=True)):
            if self.done[i]:
                continue
            for b, raw in enumerate(with_end):
                if raw > float("-inf"):
                    self._keep(i, raw, t - 1, b, True)
            for b, raw in enumerate(cut if last else ()):
                if raw > float("-inf"):
                    self._keep(i, raw, t, b, False)
        if last:
            return True
        kg = self.per_group
        self.done = [d or all(len(g) == kg and g[-1][0] >= normalise(max(row[j * kg:(j + 1) * kg]), self.max_len,
                                                                       self.alpha)
                              for j, g in enumerate(self.kept[i]))
                     for i, (d, row) in enumerate(zip(self.done, live, strict=True))]
        return all(self.done)

    def _keep(self, i: int, raw: float, last: int, b: int, end: bool) -> None:
        """Offer beam ``b`` as it stood after step ``last`` (+ <end> if ``end``) to its group's best."""
        score, best = normalise(raw, last + 1, self.alpha), self.kept[i][b // self.per_group]
        if len(best) < self.per_group or score > best[-1][0]:  # a tie with the worst kept one would be dropped
            best.append((score, raw, last, b, end))
            best.sort(key=lambda x: -x[0])
            del best[self.per_group:]

    def read_back(self, words: list, parents: list, maps: Any, k: int) -> list[list[Hypothesis]]:
        """The kept captions, best first (ties: group order), with their words and attention maps read back from
        the back-pointers: per step each beam's word and the beam it extends (``words``, ``parents`` [steps][n][k]),
        the attention of every step and beam ``maps`` [steps, n * k, N] (or None). A caption two groups kept: once."""
        out = []
        for i, groups in enumerate(self.kept):
            hyps, seen = [], set()
            for score, raw, last, b, end in sorted((c for g in groups for c in g), key=lambda x: -x[0]):
                ids, cells = [], [(last + 1, i * k + b)] if end else []  # <end>'s attention map was taken on beam b
                for t in range(last, -1, -1):
                    parent = parents[t][i][b]
                    ids.append(words[t][i][b])
                    cells.append((t, i * k + parent))
                    b = parent
                if tuple(ids) in seen:
                    continue
                seen.add(tuple(ids))
                steps, rows = zip(*reversed(cells), strict=True)
                hyps.append(Hypothesis(ids[::-1], score, None if maps is None else maps[list(steps), list(rows)], raw))
            out.append(hyps)
        return out


def scored_rows(captions: list[list[list[int]]], max_len: int) -> list[tuple[int, list[int]]]:
    """word_log_probs' rows: (image, tokens) of each caption, its words then <end> unless it was cut at ``max_len``."""
    return [(i, ids + [END] if len(ids) < max_len else ids) for i, caps in enumerate(captions) for ids in caps]


def per_image(rows: list[tuple[int, list[int]]], table: list[list[float]], images: int) -> list[list[list[float]]]:
    """Each row's values (``table``, padded to the longest row) cut to its tokens, grouped back by image."""
    out: list[list[list[float]]] = [[] for _ in range(images)]
    for (i, tokens), values in zip(rows, table, strict=True):
        out[i].append(values[:len(tokens)])
    return out
