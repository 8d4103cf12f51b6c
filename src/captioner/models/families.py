"""The decoder families, by name: ``create_decoder(name, config, feature_size)`` builds one. Importing this module
imports no torch (the ONNX runner and the CLI's option list read the names); each family's module is imported when
it is built.

Every family speaks the interface of models/decoder.py (``start``, ``step``, ``advance``, ``forward``, ``embed``,
``out``, ``drop``, ``affines``), so search, ensembles, training, ONNX export and serving take any of them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    """A decoder family: a line for --help, whether its steps give attention maps, and its builder."""

    summary: str
    attends: bool
    build: Callable[[Any, int], nn.Module]  # (ModelConfig, the encoder's feature size) -> decoder


def _show_tell(c: Any, feature_size: int) -> nn.Module:
    from captioner.models.decoder import ShowTell

    return ShowTell(c.vocab_size, feature_size, c.embed_size, c.hidden_size, c.num_layers, c.dropout, c.batch_norm)


def _attention(c: Any, feature_size: int) -> nn.Module:
    from captioner.models.attention import ShowAttendTell

    return ShowAttendTell(c.vocab_size, feature_size, c.embed_size, c.hidden_size, c.attention_size,
                          c.context_size, c.dropout, cells=c.grid * c.grid,
                          score=c.attention_score)


def _adaptive(c: Any, feature_size: int) -> nn.Module:
    from captioner.models.adaptive import AdaptiveAttention

    return AdaptiveAttention(c.vocab_size, feature_size, c.embed_size, c.hidden_size, c.attention_size,
                             c.context_size, c.dropout, cells=c.grid * c.grid)


def _topdown(c: Any, feature_size: int) -> nn.Module:
    from captioner.models.topdown import TopDown

    return TopDown(c.vocab_size, feature_size, c.embed_size, c.hidden_size, c.attention_size, c.context_size,
                   c.dropout, cells=c.grid * c.grid)


FAMILIES: MappingProxyType[str, Family] = MappingProxyType({
    "show-tell": Family("pooled image as the LSTM's first input (Vinyals et al. 2015)", False, _show_tell),
    "attention": Family("soft attention over the G x G grid at every word (Xu et al. 2015)", True, _attention),
    "adaptive": Family("attention with a visual sentinel: a gate chooses the image or the language model "
                       "(Lu et al. 2017)", True, _adaptive),
    "topdown": Family("an attention LSTM and a language LSTM (Anderson et al. 2018's top-down decoder)", True,
                      _topdown),
})
DECODERS = tuple(FAMILIES)


def family(name: str) -> Family:
    """The family called ``name``; an unknown name is an error listing the choices."""
    if name not in FAMILIES:
        raise ValueError(f"unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
    return FAMILIES[name]


def create_decoder(name: str, config: Any, feature_size: int) -> nn.Module:
    """A new decoder of family ``name`` for ``config`` (a ModelConfig) over features of ``feature_size`` channels."""
    return family(name).build(config, feature_size)


def describe() -> str:
    """The families for a --decoder help text: 'name (summary), ...'."""
    return "; ".join(f"{name}: {f.summary}" for name, f in FAMILIES.items())
