"""Batched caption generation from image embeddings: greedy and beam search, returning ids and log-probs."""
from __future__ import annotations

import torch

from captioner.data.vocab import END, PAD, START, UNK
from captioner.models.decoder import Decoder, State

Hypothesis = tuple[list[int], float]  # word ids without <start>/<end>, total log-probability (or beam score)


def _next(decoder: Decoder, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """Log-probabilities of the next word; <pad>, <start> and <unk> are never generated."""
    log_probs, state = decoder.step(tokens, state)
    log_probs[:, [PAD, START, UNK]] = float("-inf")
    return log_probs, state


@torch.inference_mode()
def greedy(decoder: Decoder, image: torch.Tensor, max_len: int = 20) -> list[Hypothesis]:
    """Most likely word at each step until <end> or ``max_len`` words, for each image embedding [B, E]."""
    state = decoder.start(image)
    tokens = torch.full((image.size(0),), START, dtype=torch.long, device=image.device)
    done = torch.zeros_like(tokens, dtype=torch.bool)
    score = torch.zeros(image.size(0), device=image.device)
    steps = []
    for _ in range(max_len + 1):  # max_len words, then room for <end>
        log_probs, state = _next(decoder, tokens, state)
        best, tokens = log_probs.max(-1)
        score += best.masked_fill(done, 0.0)
        steps.append(tokens.masked_fill(done, END))
        done |= tokens == END
        if done.all():
            break
    ids = torch.stack(steps, 1).tolist()
    return [(_until_end(row)[:max_len], s) for row, s in zip(ids, score.tolist(), strict=True)]


def _until_end(ids: list[int]) -> list[int]:
    return ids[:ids.index(END)] if END in ids else ids


def _normalise(logp: float, length: int, alpha: float) -> float:
    """GNMT length penalty: alpha 0 keeps the raw log-probability, larger alpha favours longer captions."""
    return logp / (((5 + length) / 6) ** alpha) if alpha else logp


@torch.inference_mode()
def beam_search(decoder: Decoder, image: torch.Tensor, beam: int = 3, max_len: int = 20,
                length_penalty: float = 0.0) -> list[list[Hypothesis]]:
    """The ``beam`` best captions of each image embedding [B, E], best first, scored with the length penalty.

    Captions that end are kept; when fewer than ``beam`` have ended by ``max_len``, the live beams fill in.
    """
    if beam < 1:
        raise ValueError(f"beam size must be >= 1, got {beam}")
    n, k = image.size(0), beam
    h, c = decoder.start(image)
    state = (h.repeat_interleave(k, 1), c.repeat_interleave(k, 1))
    tokens = torch.full((n * k,), START, dtype=torch.long, device=image.device)
    scores = torch.full((n, k), float("-inf"), device=image.device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step yields k different words
    seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(n)]
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    for step in range(max_len + 1):
        log_probs, state = _next(decoder, tokens, state)
        vocab = log_probs.size(-1)
        total = (scores.unsqueeze(-1) + log_probs.view(n, k, vocab)).view(n, -1)
        top, index = total.topk(min(2 * k, total.size(1)), dim=1)
        rows, new_scores, new_tokens = [], torch.full_like(scores, float("-inf")), tokens.clone()
        new_seqs = [[[] for _ in range(k)] for _ in range(n)]
        for i in range(n):
            alive = 0
            for s, flat in zip(top[i].tolist(), index[i].tolist(), strict=True):
                b, w = flat // vocab, flat % vocab
                if s == float("-inf") or alive == k:
                    break
                if w == END:
                    if len(finished[i]) < k:
                        finished[i].append((seqs[i][b], _normalise(s, len(seqs[i][b]) + 1, length_penalty)))
                    continue
                if step == max_len:
                    continue
                new_seqs[i][alive] = seqs[i][b] + [w]
                new_scores[i, alive], new_tokens[i * k + alive] = s, w
                rows.append(i * k + b)
                alive += 1
            rows += [i * k] * (k - alive)  # pad rows of beams that died (score stays -inf)
        if step == max_len:
            break  # seqs/scores keep the max_len-word beams for the fallback
        seqs, scores, tokens = new_seqs, new_scores, new_tokens
        state = tuple(t[:, torch.tensor(rows, device=image.device)] for t in state)
        best_alive = scores.max(1).values.tolist()
        if all(len(f) >= k and max(x[1] for x in f) >= best_alive[i] and not length_penalty
               for i, f in enumerate(finished)):
            break
    out = []
    for i in range(n):
        hyps = list(finished[i])
        for b in range(k):  # fallback: beams still alive when max_len was reached
            if len(hyps) < k and scores[i, b] > float("-inf"):
                hyps.append((seqs[i][b], _normalise(float(scores[i, b]), len(seqs[i][b]), length_penalty)))
        out.append(sorted(hyps, key=lambda x: -x[1])[:k])
    return out
