"""What every `captioner` command shares: the app, the data and model options, the search options and the error
exit."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from captioner import recipe
from captioner.models.families import DECODERS
from captioner.search import Search

# rich_markup_mode=None: click's plain help, which wraps text but never cuts an option's name (rich's tables did)
app = typer.Typer(help="Train, evaluate and serve CNN->LSTM image-captioning models (Show and Tell).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)

DataArg = Annotated[Path, typer.Option("--data", help="Data set: a folder with annotations/captions_<split>*.json "
                                       "(synthetic, COCO 2014/2017 layout), a Karpathy JSON, a COCO annotation file, "
                                       "a Flickr8k/30k token file (splits from the Flickr_8k.*Images.txt lists beside "
                                       "it) or an image,caption CSV (captions.txt); the format is read from the file")]
ImagesOpt = Annotated[Path | None, typer.Option(help="Image folder (COCO file, Flickr token file or CSV; found "
                                                "beside a Flickr file by its usual name) or image root (Karpathy)")]

LangOpt = Annotated[str | None, typer.Option("--lang", help="Caption language: en, zh, de, fr, es, it, nl (stored in "
                                             "vocab.json; default: guessed from the captions, said in the log)")]
Decoder = Enum("Decoder", {name: name for name in DECODERS}, type=str)  # --decoder's choices: the registry
TokenizerOpt = Annotated[str | None, typer.Option(help="The language's tokenizer: zh jieba (words, default) or char; "
                                                  "en treebank; others unicode")]


def _fail(e: Exception) -> typer.Exit:
    typer.secho(f"error: {e}", fg="red", err=True)
    return typer.Exit(2)



MaxLenOpt = Annotated[int | None, typer.Option(min=1, help="Longest caption, in tokens (default: the model's "
                                                "max_len)")]
BeamOpt = Annotated[int | None, typer.Option(help=f"Beam width (1: greedy; default {recipe.SEARCH.beam}, 1 with "
                                             "--sample)")]
PenaltyOpt = Annotated[float, typer.Option(help="Beam length penalty alpha (GNMT): 0 raw log-probability, "
                                           "larger favours longer captions")]
RuntimeOpt = Annotated[str, typer.Option(help="torch (--model is a model folder), int8 (the same on the CPU with "
                                         "the decoder's weights in int8: ~3x faster words) or onnx (--model is a "
                                         "folder from `captioner export --onnx`: onnxruntime, no torch)")]
BlockOpt = Annotated[int, typer.Option(help="Rule out a word that would complete an n-gram already in the caption "
                                       "(e.g. 3; 0: off)")]
BadEndingsOpt = Annotated[bool, typer.Option("--no-bad-endings/--allow-bad-endings", help="Rule out <end> after a "
                                             "function word (a, the, of, with, ...: captioner/data/bad_endings/)")]
SampleOpt = Annotated[bool, typer.Option("--sample", help="Draw captions from the model instead of searching")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature (below 1 sharper, above 1 flatter)")]
TopKOpt = Annotated[int, typer.Option(help="Sample among the k likeliest words (0: all)")]
TopPOpt = Annotated[float, typer.Option(help="Sample among the likeliest words that hold this probability (nucleus)")]
NOpt = Annotated[int, typer.Option("--n", help="Captions sampled per image (the likeliest is the one used)")]
SeedOpt = Annotated[int | None, typer.Option(help="Sampling seed: the same seed, the same captions of an image")]
GroupsOpt = Annotated[int, typer.Option(help="Diverse beam search: the beams in G groups, each kept from the words "
                                        "earlier groups chose (G must divide --beam)")]
PrecisionOpt = Annotated[str, typer.Option(help="auto (bfloat16 where the processor multiplies it natively: a GPU, "
                                            "a CPU with AMX or AVX-512 BF16; float32 elsewhere), fp32 or bf16; "
                                            "the encoder pass (and training's steps); said in the log")]
DiversityOpt = Annotated[float, typer.Option(help="Diverse beam search: a group's penalty per earlier group's beam "
                                             "with the same word at that step")]


# every command that searches takes these flags (``searching``): name, declaration, default (the recipe's search)
SEARCH_FLAGS = (("beam", BeamOpt, None), ("max_len", MaxLenOpt, None),
                ("length_penalty", PenaltyOpt, recipe.SEARCH.length_penalty),
                ("block_ngram", BlockOpt, recipe.SEARCH.block_ngram),
                ("no_bad_endings", BadEndingsOpt, recipe.SEARCH.bad_endings), ("sample", SampleOpt, False),
                ("temperature", TemperatureOpt, 1.0), ("top_k", TopKOpt, 0), ("top_p", TopPOpt, 1.0), ("n", NOpt, 1),
                ("seed", SeedOpt, None), ("groups", GroupsOpt, 1), ("diversity", DiversityOpt, 0.0))


def search_from_flags(beam: int | None = None, no_bad_endings: bool = recipe.SEARCH.bad_endings,
                      **flags: Any) -> Search:
    """The Search that the search flags ask for (unset ones at their defaults); unset, the beam width is the
    recipe's, 1 with --sample."""
    flags = {name: default for name, _, default in SEARCH_FLAGS[1:] if name != "no_bad_endings"} | flags
    beam = beam if beam is not None else 1 if flags["sample"] else recipe.SEARCH.beam
    return Search(beam, bad_endings=no_bad_endings, **flags)


def searching(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with the search flags in place of its ``search: Search`` parameter, which gets the Search they
    ask for (a bad combination: the error exit, naming the flag)."""
    hints = get_type_hints(command, include_extras=True)
    params = []
    for p in inspect.signature(command).parameters.values():
        params += [inspect.Parameter(name, p.POSITIONAL_OR_KEYWORD, default=default, annotation=declared)
                   for name, declared, default in SEARCH_FLAGS] if p.name == "search" else [
            p.replace(annotation=hints[p.name])]

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        try:
            search = search_from_flags(**{name: kwargs.pop(name) for name, _, _ in SEARCH_FLAGS})
        except ValueError as e:
            raise _fail(e) from None
        return command(**kwargs, search=search)

    run.__signature__ = inspect.Signature(params, return_annotation=hints.get("return"))  # what typer reads
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


ModelsOpt = Annotated[list[Path], typer.Option("--model", help="Model folder (model.safetensors, config.json, "
                                              "vocab.json); repeated: an ensemble of models sharing the vocabulary "
                                              "and encoder, their log-probabilities averaged at every step")]


