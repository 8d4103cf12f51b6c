"""Caption with the ONNX graphs of ``captioner export --onnx`` on onnxruntime, without torch: ``load_onnx(folder)``
gives a model with inference.Captioner's ``caption(images, search, ...)``, ``config`` and ``vocab``.

Greedy, beam (and diverse beam) search and sampling are written again here in numpy, because torch is absent; what
needs no arrays is shared with search/decode.py (search/hypotheses.py: the beam's kept captions, its stopping rule and
read-back, the Caption). The rest mirrors decode.py's conventions exactly (at most ``max_len`` tokens; a caption's
log-probability counts its words and <end> when produced, its score is what its list is ordered by; n-gram blocking
and bad endings; seeded sampling draws decode's uniforms, so the same captions).
Preprocessing replicates data/images.eval_transform on PIL images: the centre at most 3:1 (rgb.crop_aspect), PIL's
antialiased bilinear resize of the short side, centre crop, scale to [0, 1], normalise with the backbone's mean and
std.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from captioner.data.rgb import crop_aspect, to_rgb
from captioner.data.vocab import END, PAD, START, UNK, Vocabulary
from captioner.io import read_json
from captioner.models.config import ModelConfig
from captioner.search import DEFAULT, Search
from captioner.search.hypotheses import Caption, Ended, Hypothesis, captions, per_image, scored_rows, until_end

NEVER = [PAD, START, UNK]  # tokens no search ever generates, nor <end> after <start> (decode.NEVER)
FILES = ("encoder.onnx", "start.onnx", "step.onnx", "config.json", "vocab.json", "preprocess.json")
State = list[np.ndarray]
Step = Callable[[np.ndarray, State], tuple[np.ndarray, State, np.ndarray | None]]


def preprocess(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[3, size, size] float32: eval_transform's bounded resize of the short side, centre crop and normalisation."""
    image = crop_aspect(to_rgb(image))
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new = (size, int(size * long / short)) if w <= h else (int(size * long / short), size)
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BILINEAR)
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    x = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) * np.float32(1 / 255)
    return ((x - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)


class Rules:
    """decode._Step's rules on log-probabilities the runner's step has already cleared of the specials:
    ``block_ngram`` and ``bad_endings`` (decode's module docstring)."""

    def __init__(self, max_len: int, block_ngram: int = 0, bad_endings: Sequence[int] | None = None) -> None:
        self.max_len, self.block = max_len, block_ngram
        self.bad = np.array(sorted(set(bad_endings)), np.int64) if bad_endings else None

    def __call__(self, log_probs: np.ndarray, words: np.ndarray) -> np.ndarray:
        """``log_probs`` [rows, V] after each row's ``words`` so far [rows, t], with the ruled-out tokens at -inf."""
        t = words.shape[1]
        if self.block and t >= self.block:
            log_probs[repeats(words, self.block, log_probs.shape[1])] = -np.inf
        if self.bad is not None:
            if t:
                log_probs[np.isin(words[:, -1], self.bad), END] = -np.inf
            if t == self.max_len - 1:
                log_probs[:, self.bad] = -np.inf
        return log_probs


def repeats(words: np.ndarray, n: int, vocab: int) -> np.ndarray:
    """decode.repeats: True for each word that would complete an ``n``-gram already in its row of ``words``."""
    grams = np.lib.stride_tricks.sliding_window_view(words, n, axis=1)  # [rows, t - n + 1, n]
    seen = (grams[:, :, :-1] == words[:, None, words.shape[1] - n + 1:]).all(-1)
    out = np.zeros((len(words), vocab), bool)
    rows, cols = np.nonzero(seen)
    out[rows, grams[rows, cols, -1]] = True
    return out


def hypotheses(step: Step, state: State, replaced: list[int], images: int, vocab: Vocabulary,
               s: Search) -> list[list[Hypothesis]]:
    """decode.search: each image's captions, best first, as ``s`` asks (its max_len set)."""
    rules = dict(block_ngram=s.block_ngram, bad_endings=vocab.bad_ending_ids() if s.bad_endings else None)
    if s.sample:
        return sample(step, state, images, s.n, s.max_len, s.temperature, s.top_k, s.top_p, s.seed, **rules)
    if s.beam == 1:
        return [[h] for h in greedy(step, state, images, s.max_len, **rules)]
    return beam_search(step, state, replaced, images, s.beam, s.max_len, s.length_penalty, **rules, groups=s.groups,
                       diversity=s.diversity)


def greedy(step: Step, state: State, n: int, max_len: int, block_ngram: int = 0,
           bad_endings: Sequence[int] | None = None) -> list[Hypothesis]:
    """decode.greedy: the likeliest word at each step until <end> or ``max_len`` tokens."""
    rules = Rules(max_len, block_ngram, bad_endings)
    tokens = np.full(n, START, np.int64)
    ids = np.full((n, max_len), END, np.int64)
    done, score, alphas = np.zeros(n, bool), np.zeros(n, np.float32), []
    for t in range(max_len):
        log_probs, state, alpha = step(tokens, state)
        log_probs = rules(log_probs, ids[:, :t])
        tokens = log_probs.argmax(-1)
        score += np.where(done, np.float32(0), log_probs[np.arange(n), tokens])
        ids[:, t] = np.where(done, END, tokens)
        alphas.append(alpha)
        done |= tokens == END
        if done.all():
            break
    out = []
    for i, row in enumerate(ids.tolist()):
        words, steps = until_end(row)
        maps = None if alphas[0] is None else np.stack([a[i] for a in alphas[:steps]])
        out.append(Hypothesis(words, float(score[i]), maps, float(score[i])))
    return out


def beam_search(step: Step, state: State, replaced: list[int], n: int, k: int, max_len: int,
                length_penalty: float, block_ngram: int = 0, bad_endings: Sequence[int] | None = None,
                groups: int = 1, diversity: float = 0.0) -> list[list[Hypothesis]]:
    """decode.beam_search: the ``k`` best captions per image by normalised score, with its exact stopping rule
    (and its diverse beam search with ``groups`` > 1).

    Only the ``replaced`` state entries are reordered: the others hold k equal rows per image from the start.
    """
    rules, kg = Rules(max_len, block_ngram, bad_endings), k // groups
    state = [s.repeat(k, axis=0) for s in state]
    tokens = np.full(n * k, START, np.int64)
    so_far = np.zeros((n * k, 0), np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    scores[:, ::kg] = 0.0
    first_row = np.arange(0, n * k, k)[:, None]
    words, parents, alphas = [], [], []
    ended = Ended(n, groups, kg, max_len, length_penalty)
    for t in range(max_len):
        log_probs, state, alpha = step(tokens, state)
        log_probs = rules(log_probs, so_far)
        alphas.append(alpha)
        total = scores[:, :, None] + log_probs.reshape(n, k, -1)
        with_end = total[:, :, END].tolist()
        total[:, :, END] = -np.inf
        scores, beams, tokens = _top(total, groups, diversity)
        words.append(tokens)
        parents.append(beams)
        if ended.offer(t, with_end, scores.tolist()):
            break
        rows = (beams + first_row).reshape(-1)
        state = [s[rows] if j in replaced else s for j, s in enumerate(state)]
        tokens = tokens.reshape(-1)
        so_far = np.concatenate([so_far[rows], tokens[:, None]], 1)
    maps = None if alphas[0] is None else np.stack(alphas)
    return ended.read_back(np.stack(words).tolist(), np.stack(parents).tolist(), maps, k)


def _top(total: np.ndarray, groups: int, diversity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """decode._top: each group's best extensions, a group's choice penalised for earlier groups' words."""
    n, k, vocab = total.shape
    kg, chosen, out = k // groups, np.zeros((n, vocab), np.float32), []
    for g in range(groups):
        part = total[:, g * kg:(g + 1) * kg].reshape(n, -1)
        ranked = part - np.float32(diversity) * np.tile(chosen, kg) if groups > 1 else part
        top = np.argpartition(-ranked, kg - 1, axis=1)[:, :kg]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(ranked, top, 1), 1, kind="stable"), 1)
        raw = np.take_along_axis(part, top, 1)
        np.add.at(chosen, (np.arange(n)[:, None], top % vocab), (raw > -np.inf).astype(np.float32))
        out.append((raw, top // vocab + g * kg, top % vocab))
    return tuple(np.concatenate(x, 1) for x in zip(*out, strict=True))


def word_log_probs(step: Step, state: State, captions: list[list[list[int]]], max_len: int) -> list[list[list[float]]]:
    """decode.word_log_probs: per image and caption each token's log-probability (words, then <end> unless cut)."""
    rows = scored_rows(captions, max_len)
    if not rows:
        return [[] for _ in captions]
    longest = max(len(t) for _, t in rows)
    targets = np.full((len(rows), longest), PAD, np.int64)
    for r, (_, tokens) in enumerate(rows):
        targets[r, :len(tokens)] = tokens
    owner = np.array([i for i, _ in rows])
    state, tokens, steps = [s[owner] for s in state], np.full(len(rows), START, np.int64), []
    for t in range(longest):
        log_probs, state, _ = step(tokens, state)
        steps.append(log_probs[np.arange(len(rows)), targets[:, t]])
        tokens = targets[:, t]
    return per_image(rows, np.stack(steps, 1).tolist(), len(captions))


def sample(step: Step, state: State, images: int, n: int, max_len: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int | None = None, block_ngram: int = 0,
           bad_endings: Sequence[int] | None = None) -> list[list[Hypothesis]]:
    """decode.sample_captions: ``n`` captions drawn per image, most likely first; with ``seed`` the same uniforms as
    decode's, so the same captions."""
    rules, rng, rows = Rules(max_len, block_ngram, bad_endings), np.random.default_rng(seed), images * n
    state = [s.repeat(n, axis=0) for s in state]
    tokens = np.full(rows, START, np.int64)
    alive, total, steps, alphas = np.ones(rows, bool), np.zeros(rows, np.float32), [], []
    for _ in range(max_len):
        log_probs, state, alpha = step(tokens, state)
        log_probs = rules(log_probs, np.stack(steps, 1) if steps else np.zeros((rows, 0), np.int64))
        tokens = draw(log_probs, n, temperature, top_k, top_p, rng)
        total += np.where(alive, log_probs[np.arange(rows), tokens], np.float32(0))
        steps.append(np.where(alive, tokens, PAD))
        alphas.append(alpha)
        alive &= tokens != END
        if not alive.any():
            break
    ids = np.stack(steps, 1).tolist()
    out = []
    for first in range(0, rows, n):
        hyps = []
        for r in range(first, first + n):
            words, taken = until_end(ids[r])
            maps = None if alphas[0] is None else np.stack([a[r] for a in alphas[:taken]])
            hyps.append(Hypothesis(words, float(total[r]), maps, float(total[r])))
        out.append(sorted(hyps, key=lambda h: -h.score))
    return out


def draw(log_probs: np.ndarray, n: int, temperature: float, top_k: int, top_p: float,
         rng: np.random.Generator) -> np.ndarray:
    """decode._draw's filtered distribution and inverse CDF on ``n`` uniforms a step, shared by every image."""
    x = log_probs.astype(np.float64) / temperature
    probs = np.exp(x - x.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    vocab = probs.shape[1]
    if top_k:
        k = min(top_k, vocab)
        ranked = -np.sort(np.partition(-probs, k - 1, axis=1)[:, :k], axis=1)  # best first
        probs = np.where(probs >= ranked[:, -1:], probs, 0.0)
    if top_p < 1:
        ranked = ranked if top_k else -np.sort(-probs, axis=1)
        before = ranked.cumsum(1) - ranked
        last = (before < top_p * probs.sum(1, keepdims=True)).sum(1, keepdims=True) - 1
        probs = np.where(probs >= np.take_along_axis(ranked, last, 1), probs, 0.0)
    cdf = probs.cumsum(1)
    u = np.tile(rng.random(n), len(probs) // n)
    return np.minimum((cdf <= (u * cdf[:, -1])[:, None]).sum(1), vocab - 1)


class OnnxCaptioner:
    """A captioner on onnxruntime: ``caption(images)`` as inference.Captioner's, from an exported folder;
    ``threads`` bounds each graph's intra-op threads (0: onnxruntime's default)."""

    def __init__(self, folder: str | Path, providers: Sequence[str] | None = None, threads: int = 0) -> None:
        folder = Path(folder)
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"ONNX folder {folder} lacks {', '.join(missing)} (write it with "
                                    f"`captioner export --onnx {folder} --model RUN`)")
        self.config = ModelConfig.from_dict(read_json(folder / "config.json", "model config"),
                                            str(folder / "config.json"))
        self.vocab = Vocabulary.load(folder / "vocab.json")
        self.config.check_vocab(self.vocab, str(folder / "config.json"), str(folder / "vocab.json"))
        self.preprocess = read_json(folder / "preprocess.json", "preprocessing settings")
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                  if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (the physical cores)
        # The three graphs run one after another, each with its own thread pool: idle pools that spin took the cores
        # from the running one (ResNet-50 + 10k words, batch 1 on 2 cores: 140 ms a caption spinning, 59 ms not).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = {name: ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=providers)
                   for name in ("encoder", "start", "step")}
        self.encoder, self.start, self.step_graph = session["encoder"], session["start"], session["step"]
        self.state_names = [i.name for i in self.start.get_outputs()]
        outputs = [o.name for o in self.step_graph.get_outputs()]
        self.replaced = [j for j, name in enumerate(self.state_names) if f"next_{name}" in outputs]
        self.attention = "attention" in outputs

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State, np.ndarray | None]:
        """Log-probabilities [B, V] with <pad>, <start>, <unk> (and <end> after <start>) ruled out, the next
        state, the attention."""
        feeds = {"tokens": tokens, **dict(zip(self.state_names, state, strict=True))}
        log_probs, *out = self.step_graph.run(None, feeds)
        state = list(state)
        for j, new in zip(self.replaced, out, strict=False):
            state[j] = new
        log_probs[:, NEVER] = -np.inf
        log_probs[tokens == START, END] = -np.inf
        return log_probs, state, out[-1] if self.attention else None

    def caption(self, images: Sequence[Image.Image], search: Search = DEFAULT, batch_size: int = 32,
                word_scores: bool = False) -> list[list[Caption]]:
        """Caption PIL images (as inference.Captioner.caption): per image a best-first list."""
        p, g, s = self.preprocess, self.config.grid, search.resolved(self.config.max_len)
        out: list[list[Caption]] = []
        for first in range(0, len(images), batch_size):
            x = np.stack([preprocess(im, p["image_size"], p["mean"], p["std"])
                          for im in images[first:first + batch_size]])
            features = self.encoder.run(None, {"images": x})[0]
            state = self.start.run(None, {"features": features})
            rows = hypotheses(self.step, state, self.replaced, len(x), self.vocab, s)
            per_word = word_log_probs(self.step, state, [[h.ids for h in row] for row in rows], s.max_len) \
                if word_scores else None
            out += captions(self.vocab, rows, per_word, lambda maps: maps.reshape(-1, g, g))
        return out


def load_onnx(folder: str | Path, threads: int = 0) -> OnnxCaptioner:
    """The exported captioner in ``folder`` (encoder.onnx, start.onnx, step.onnx, config, vocabulary, preprocessing)."""
    return OnnxCaptioner(folder, threads=threads)
