"""The API's request and response bodies (pydantic models): what /v1/captions and /v1/model answer."""
from __future__ import annotations

from pydantic import BaseModel, Field

from captioner.models.families import DECODERS


class Caption(BaseModel):
    text: str = Field(description="UTF-8; words joined as the model's language writes them (Chinese: no spaces)")
    words: list[str] = Field(description="the caption's words, one per attention map")
    score: float = Field(description="what the alternatives are ordered by, best first (higher is better): with a "
                                     "length penalty alpha > 0 in beam search the log-probability divided by "
                                     "((5 + words) / 6) ** alpha (GNMT), otherwise the log-probability")
    log_prob: float = Field(description="log-probability of the caption's words (and of <end> when produced)")
    attention: list[list[list[float]]] | None = Field(
        None, description="with ?attention=true on an attention model: per word (then <end>, when produced) the "
                          "G x G attention weights over the centre crop, rows top to bottom; each map sums to 1")


class Result(BaseModel):
    filename: str
    captions: list[Caption] = Field(description="best first (none for a file that was skipped)")
    error: str | None = Field(None, description="why this file was skipped; the request's other files are captioned "
                                                "(a request whose files are all bad is answered with that error)")


class CaptionResponse(BaseModel):
    results: list[Result]
    model: str
    latency_ms: float = Field(description="time in the server after the upload: decoding, queueing, captioning")


class ModelInfo(BaseModel):
    name: str
    decoder: str = Field(description=f"decoder family: {', '.join(DECODERS)}")
    grid: int = Field(description="side G of the feature grid (attention maps are G x G)")
    backbone: str
    image_size: int
    vocab_size: int
    language: str = Field(description="the captions' language and tokenizer (vocab.json), e.g. 'Chinese (zh), jieba "
                                      "words'")
    beam: int
    metrics: dict[str, float] | None = Field(description="the model folder's metrics_test.json (else metrics_val.json)")
    warning: str | None = Field(None, description="set when the model cannot caption photos (synthetic shapes only)")


class SearchQuery(BaseModel):
    """Search controls a request may set, each unset one the server's (``captioner serve`` flags; all off there by
    default); checked together with the beam width, 422 naming the option."""

    block_ngram: int | None = Field(None, ge=0, le=10, description="rule out a word that would complete an n-gram "
                                    "already in the caption (e.g. 3; 0: off)")
    bad_endings: bool | None = Field(None, description="rule out <end> after a function word (a, the, of, with, ...)")
    sample: bool | None = Field(None, description="draw captions from the model instead of searching (beam 1)")
    temperature: float | None = Field(None, gt=0, le=100, description="sampling temperature (below 1 sharper)")
    top_k: int | None = Field(None, ge=0, description="sample among the k likeliest words (0: all)")
    top_p: float | None = Field(None, gt=0, le=1, description="sample among the likeliest words that hold this "
                                "probability (nucleus)")
    n: int | None = Field(None, ge=1, le=10, description="captions sampled per image, the likeliest first")
    seed: int | None = Field(None, ge=0, description="sampling seed: the same seed, the same captions of an image")
    groups: int | None = Field(None, ge=1, le=10, description="diverse beam search: the beams in this many groups, "
                               "each kept from the words earlier groups chose (must divide beam)")
    diversity: float | None = Field(None, ge=0, le=100, description="diverse beam search: a group's penalty per "
                                    "earlier group's beam with the same word at that step")


class Health(BaseModel):
    status: str


class Error(BaseModel):
    detail: str
