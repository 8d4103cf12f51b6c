"""captioner: train, evaluate and serve image-captioning models (Show and Tell; Show, Attend and Tell)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioner.export.runner import OnnxCaptioner
    from captioner.inference import Captioner

__version__ = "0.1.0"


def load(folder: str, device: str | None = None, runtime: str = "torch",
         precision: str = "fp32") -> Captioner | OnnxCaptioner:
    """Load a trained captioner of either family from its artifact folder (model.safetensors + config.json +
    vocab.json); ``device`` defaults to the GPU when there is one. ``runtime="int8"`` decodes on the CPU with int8
    copies of the decoder's weights (~3x faster steps); ``runtime="onnx"`` loads a folder written by
    ``captioner export --onnx`` on onnxruntime instead (no torch); all give ``caption(images, beam, ...)``.
    ``precision`` (torch runtimes): the encoder pass's, fp32, bf16 or auto (bf16 where the processor has it)."""
    if runtime == "onnx":
        from captioner.export.runner import load_onnx

        return load_onnx(folder)
    if runtime not in ("torch", "int8"):
        raise ValueError(f"unknown runtime {runtime!r}: choose torch, int8 or onnx")
    from captioner.inference import load as _load

    return _load(folder, device, int8=runtime == "int8", precision=precision)
