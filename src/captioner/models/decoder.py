"""Show and Tell: the pooled image embedding is the LSTM's first input step, then the caption's word embeddings.

Every decoder family speaks one interface, on which search/decode.py searches and export/onnx.py traces:
``start(features) -> state`` and ``step(tokens, state) -> (log-probs, state, attention or None)``; a state is a
tuple of tensors whose first dimension is the batch, so a search reorders it with ``index_select(0, rows)``.

A step is nearly all matrix products of a few rows (one per caption or beam) with the weights, bound by reading
the weights from memory. Without autograd (search) they use copies of the weights laid out once for the CPU's
fastest product (``Affines``): 1.5-2x faster than PyTorch's default for one row, 2-3x for a beam's three; with
``Affines.int8`` (``--runtime int8``), int8 copies: 4x fewer bytes, a step ~3x faster again.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.checkpoint import checkpoint

from captioner.data.vocab import PAD

State = tuple[torch.Tensor, ...]


class Affine:
    """``x @ weight.T + bias`` with the weight laid out once for ``layout``: "plain" (the live tensors), "fast" (CPU
    float32: W.T contiguous, which MKL multiplies by one row fastest, and oneDNN's packed layout, 2-3x faster than
    the default for a few rows, a beam) or "int8" (CPU: fbgemm's int8 weights with a scale per row, each input row
    set quantised on the fly; the product's error is ~1% of its spread)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, layout: str = "plain") -> None:
        self.weight, self.bias = weight, bias
        fast = layout == "fast"
        self.t = weight.t().contiguous() if fast else None
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 3) if fast else None  # 3: tuned for beams
        self.int8 = int8_pack(weight, bias) if layout == "int8" else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8 is not None:
            return torch.ops.quantized.linear_dynamic(x, self.int8, True)  # True: 7-bit inputs, no overflow on AVX2
        if self.t is None:
            return F.linear(x, self.weight, self.bias)
        if x.size(0) == 1:
            return torch.addmm(self.bias, x, self.t)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class Affines:
    """A step's affine maps, from ``build`` as (weight, bias) pairs: under autograd (or tracing) on the live
    parameters; otherwise built once, laid out for speed on CPU (in int8 when ``int8`` is set), and cached until a
    parameter changes (an in-place update bumps its ``_version``, ``to()`` makes new tensors; a write that bypasses
    the counter, as fused Adam's does, must bump it with ``increment_version``: CaptionModule.optimizer_step)."""

    def __init__(self, build: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.build, self.key, self.cache, self.int8 = build, None, (), False

    def __call__(self, params: Iterable[torch.Tensor]) -> tuple[Affine, ...]:
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return tuple(Affine(w, b) for w, b in self.build())
        key = (self.int8, *((p.data_ptr(), p._version) for p in params))
        if key != self.key:
            self.key, self.cache = key, tuple(Affine(w, b, self._layout(w)) for w, b in self.build())
        return self.cache

    def _layout(self, weight: torch.Tensor) -> str:
        if not weight.is_cpu or weight.dtype != torch.float32:
            return "plain"
        if self.int8:
            return "int8"
        return "fast" if torch.backends.mkldnn.is_available() else "plain"

    def __getstate__(self) -> dict:
        """Copies (``copy.deepcopy`` of a model) start with an empty cache: oneDNN's packed tensors cannot be copied."""
        return {"build": self.build, "key": None, "cache": (), "int8": self.int8}


def int8_pack(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """fbgemm's packed int8 weight (symmetric, a scale per output row) and float bias, for ``linear_dynamic``."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ValueError("int8 decoding needs PyTorch's fbgemm kernels (an x86-64 CPU); use --runtime torch")
    scales = (weight.abs().amax(1).clamp_min(1e-12) / 127).double()
    with warnings.catch_warnings():  # quantised tensors are deprecated upstream; fbgemm's kernels are all the
        warnings.filterwarnings("ignore", "torch.quantize_per", UserWarning)  # pinned torch has for this
        q = torch.quantize_per_channel(weight.detach(), scales, torch.zeros_like(scales, dtype=torch.long), 0,
                                       torch.qint8)
    return torch.ops.quantized.linear_prepack(q, bias.detach())


def lstm_cell(xh: torch.Tensor, c: torch.Tensor, gates: Affine) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step: (h, c) from [x; h] and c, gates in PyTorch's order (input, forget, cell, output)."""
    i, f, g, o = gates(xh).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def batch_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a BatchNorm1d with running statistics, in training too: a training batch is normalised by those of the
    batches before it (the first one sets them), then updates them.

    A length-bucketed batch holds the images of captions of one length: normalised by its own statistics, the
    features would tell the decoder the length it is to predict, which no test image does (measured on the demo: the
    attention model began every 3-object caption with "the", p = 1.0, where 21% of them do). The running averages
    start as the exact mean of the batches seen, then follow the module's momentum.
    """
    if not isinstance(norm, nn.BatchNorm1d):
        return norm(x)
    update = norm.training and x.size(0) > 1  # one caption has no statistics
    if update and not norm.num_batches_tracked:  # the first batch sets them
        _update_statistics(norm, x)
        update = False
    # copies: autograd keeps the statistics used here, and the update below changes them in place
    out = F.batch_norm(x, norm.running_mean.clone(), norm.running_var.clone(), norm.weight, norm.bias,
                       training=False, eps=norm.eps)
    if update:
        _update_statistics(norm, x)
    return out


def _update_statistics(norm: nn.BatchNorm1d, x: torch.Tensor) -> None:
    """Fold a batch into the running mean and variance."""
    with torch.no_grad():
        norm.num_batches_tracked += 1
        momentum = max(1 / float(norm.num_batches_tracked), norm.momentum or 0.0)
        F.batch_norm(x.detach(), norm.running_mean, norm.running_var, training=True, momentum=momentum, eps=norm.eps)


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
        self.affines = Affines(self._affines)

    def image(self, features: torch.Tensor) -> torch.Tensor:
        """Image embedding [B, E] of grid features [B, N, C] (their mean is the CNN's average pool)."""
        pooled = batch_norm(self.standardize, features.float().mean(1))
        return batch_norm(self.norm, self.project(pooled))

    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Teacher forcing: the output layer's inputs [B, T-1, H] predicting captions[:, 1:] (captions start with
        <start>); ``caption_loss`` applies ``self.out`` to them.

        ``lengths`` (with padded captions) packs the sequence so padding is never run through the LSTM.
        """
        x = torch.cat([self.image(features).unsqueeze(1), self.embed(captions[:, :-1])], dim=1)
        if lengths is None:
            h, _ = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.size(1))
        return self.drop(h[:, 1:]), None

    def start(self, features: torch.Tensor) -> State:
        """(h_1, c_1, ..., h_L, c_L), each [B, H]: the LSTM's layers after reading the image embedding."""
        x = self.image(features)
        zeros = x.new_zeros(x.size(0), self.lstm.hidden_size)
        return self._cells(x, (zeros,) * (2 * self.lstm.num_layers), self.affines(self.parameters()))

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        """Log-probabilities [B, V] of the word after ``tokens`` [B], the next state, no attention."""
        affines = self.affines(self.parameters())
        state = self._cells(self.embed(tokens), state, affines)
        return F.log_softmax(affines[-1](state[-2]), dim=-1), state, None

    def advance(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        """``step`` up to the output layer's input [B, H] (before dropout), for step-by-step training."""
        state = self._cells(self.embed(tokens), state, self.affines(self.parameters()))
        return state[-2], state, None

    def _cells(self, x: torch.Tensor, state: State, affines: tuple[Affine, ...]) -> State:
        """One time step through the LSTM's layers as cells (a one-step nn.LSTM call costs several times more)."""
        out: list[torch.Tensor] = []
        for layer in range(self.lstm.num_layers):
            if layer:
                x = F.dropout(x, self.lstm.dropout, self.training)
            x, c = lstm_cell(torch.cat([x, state[2 * layer]], 1), state[2 * layer + 1], affines[layer])
            out += [x, c]
        return tuple(out)

    def _affines(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer the gates of [x; h] ([W_ih W_hh], b_ih + b_hh), then the output layer."""
        layers = [self.lstm.all_weights[layer] for layer in range(self.lstm.num_layers)]
        return [(torch.cat([w_ih, w_hh], 1), b_ih + b_hh) for w_ih, w_hh, b_ih, b_hh in layers] + [
            (self.out.weight, self.out.bias)]


def unroll(decoder: nn.Module, features: torch.Tensor, captions: torch.Tensor,
           own: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher forcing one word at a time (scheduled sampling): the decoder's ``forward`` outputs, but after the first
    word each caption's input is, with probability ``own``, a word drawn from the model's own prediction at the step
    before (ruotianluo's ``ss_prob``) instead of the reference's. At ``own`` 0 it computes what ``forward`` does."""
    state, hidden, alphas = decoder.start(features), [], []
    for t in range(captions.size(1) - 1):
        tokens = captions[:, t]
        if t and own > 0:
            with torch.no_grad():
                drawn = torch.multinomial(F.softmax(decoder.out(decoder.drop(hidden[-1])), -1), 1).squeeze(1)
            tokens = torch.where(torch.rand(len(tokens), device=tokens.device) < own, drawn, tokens)
        h, state, alpha = decoder.advance(tokens, state)
        hidden.append(h)
        alphas.append(alpha)
    # laid out time-major, as nn.LSTM's batch-first output is: the same dropout mask as ``forward`` draws
    return decoder.drop(torch.stack(hidden).transpose(0, 1)), None if alphas[0] is None else torch.stack(alphas, 1)


def caption_loss(out: nn.Linear, hidden: torch.Tensor, captions: torch.Tensor, budget: int = 2**23,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of the next-word predictions ``out(hidden)`` over the real words (padding ignored), with
    ``label_smoothing`` eps: the target is 1 - eps on the word and eps spread evenly over the vocabulary.

    The logits are made at most ``budget`` numbers at a time and remade in the backward pass, so their memory is
    bounded whatever the batch, length and vocabulary (COCO at batch 512: 0.5 GB a copy, several copies, otherwise).
    """
    targets = captions[:, 1:]
    real = targets != PAD
    hidden, targets = hidden[real], targets[real]
    rows = max(1, budget // out.out_features)
    if len(targets) <= rows:
        return F.cross_entropy(out(hidden), targets, label_smoothing=label_smoothing)
    summed = [checkpoint(_summed_cross_entropy, out, hidden[i:i + rows], targets[i:i + rows], label_smoothing,
                         use_reentrant=False) for i in range(0, len(targets), rows)]
    return torch.stack(summed).sum() / len(targets)


def _summed_cross_entropy(out: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor,
                          label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(out(hidden), targets, reduction="sum", label_smoothing=label_smoothing)
