"""`captioner serve`, `export` and `demo`: the service, ONNX graphs and the main job."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from captioner import recipe
from captioner.cli.common import (
    ImagesOpt,
    LangOpt,
    PrecisionOpt,
    RuntimeOpt,
    TokenizerOpt,
    _fail,
    app,
    searching,
)
from captioner.search import Search


@app.command()
@searching
def serve(model: Annotated[Path, typer.Option(help="Model folder")],
          host: Annotated[str, typer.Option(help="Address to bind (loopback by default)")] = "127.0.0.1",
          port: int = 8000, search: Search = recipe.SEARCH,
          max_batch: Annotated[int, typer.Option(help="Most images in one model batch")] = 16,
          max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits to fill")] = 10.0,
          max_queue: Annotated[int, typer.Option(help="Most images held at once (decoding, queued or being "
                                                      "captioned); past it requests get 503 with Retry-After")] = 64,
          timeout: Annotated[float, typer.Option(help="Seconds a request may take after its upload; then 504")] = 30.0,
          max_request_pixels: Annotated[int, typer.Option(help="Most pixels decoded for one request (all its "
                                                               "images, after JPEG reduction); then 413")] = 50_000_000,
          allowed_hosts: Annotated[str | None, typer.Option(help="Host names (and addresses) the server answers for, "
                                                            "comma-separated, '*' any; others get 400 (a web page "
                                                            "reaching it by DNS rebinding). Default: --host and "
                                                            "localhost, 127.0.0.1, [::1]")] = None,
          runtime: RuntimeOpt = "torch", precision: PrecisionOpt = "auto") -> None:
    """Serve captions over HTTP: a web page at /, the API at /v1/captions, its documentation at /docs."""
    from captioner.serve.app import serve as run

    try:
        run(model, host=host, port=port, search=search, max_batch=max_batch, max_wait_ms=max_wait_ms,
            max_queue=max_queue, request_timeout_s=timeout, max_request_pixels=max_request_pixels, runtime=runtime,
            precision=precision,
            allowed_hosts=[h.strip() for h in allowed_hosts.split(",") if h.strip()] if allowed_hosts else None)
    except (OSError, ValueError, ImportError) as e:
        raise _fail(e) from None


@app.command()
def export(model: Annotated[Path, typer.Option(help="Model folder (model.safetensors, config.json, vocab.json)")],
           onnx: Annotated[Path, typer.Option(help="Folder to write the ONNX graphs (encoder, decoder start and step) "
                                              "and the config, vocabulary and preprocessing to")]) -> None:
    """Export a model as ONNX graphs for onnxruntime: then `caption` and `serve` with --runtime onnx."""
    from captioner.export.onnx import export_onnx

    try:
        typer.echo(f"onnx: {export_onnx(model, onnx)}")
    except (OSError, ValueError, ImportError) as e:
        raise _fail(e) from None


SYNTHETIC_ONLY = ("train_images", "epochs", "attention_epochs", "image_size", "grid", "backbone", "output_stride")
PHOTOS_ONLY = ("images", "families", "cache_dir", "lang", "tokenizer")


PHOTOS, SYNTHETIC = recipe.PRESETS["photos"], recipe.PRESETS["synthetic"]


@app.command()
def demo(ctx: typer.Context,
         out: Annotated[Path | None, typer.Option(help="Folder for the data set, the runs and the served model "
                                                f"(default {SYNTHETIC.out}, with --data {PHOTOS.out})")] = None,
         data: Annotated[Path | None, typer.Option(help="A real photo set instead of the synthetic scenes: a "
                                                  "Flickr token file, captions CSV, Karpathy JSON or COCO folder")]
         = None,
         images: ImagesOpt = None,
         families: Annotated[str, typer.Option(help="With --data: decoder families to train, comma-separated")]
         = ",".join(PHOTOS.families),
         cache_dir: Annotated[Path | None, typer.Option(help="With --data: feature cache folder (default OUT/cache)")]
         = None,
         lang: LangOpt = None, tokenizer: TokenizerOpt = None,
         train_images: Annotated[int, typer.Option(help="Synthetic training images")] = SYNTHETIC.train_images,
         epochs: Annotated[int, typer.Option(help="Show-Tell epochs (synthetic)")]
         = recipe.xe("show-tell", SYNTHETIC)["train"]["epochs"],
         attention_epochs: Annotated[int, typer.Option(help="Attention epochs (synthetic)")]
         = recipe.xe("attention", SYNTHETIC)["train"]["epochs"],
         scst_epochs: Annotated[int | None, typer.Option(help="Self-critical epochs for the better family (0: none; "
                                                         f"default {SYNTHETIC.scst['epochs']}, with --data "
                                                         f"{PHOTOS.scst['epochs']})")] = None,
         image_size: Annotated[int, typer.Option(help="Encoder input side (synthetic)")]
         = SYNTHETIC.model["image_size"],
         grid: Annotated[int, typer.Option(help="Feature grid side G, odd: a centre cell (synthetic)")]
         = SYNTHETIC.model["grid"],
         backbone: Annotated[str, typer.Option(help="Frozen encoder (efficientnet_lite0: pretrained, offline)")]
         = SYNTHETIC.model["backbone"],
         output_stride: Annotated[int, typer.Option(help="Stride of the encoder's feature map (16: Lite0's "
                                                    "stride-16 stage, whose cells keep colour and place)")]
         = SYNTHETIC.model["output_stride"],
         precision: PrecisionOpt = "auto", progress: bool = True) -> None:
    """The main job, offline: synthetic scenes (or, with --data, a real photo set with the real-photo recipe) ->
    one feature cache -> Show-Tell and attention models -> self-critical training -> a table, pictures."""
    from captioner.demo import run_demo
    from captioner.models.backbones import WeightsUnavailableError

    try:
        given = [n for n in SYNTHETIC_ONLY if data is not None] + [n for n in PHOTOS_ONLY if data is None]
        given = [n for n in given if ctx.get_parameter_source(n).name == "COMMANDLINE"]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            which = "synthetic demo (without --data)" if data else "demo with --data"
            raise ValueError(f"{flags}: only for the {which}; the presets' settings are in captioner/recipe.py")
        if data is None:
            preset = replace(SYNTHETIC, train_images=train_images, model=SYNTHETIC.model | dict(
                image_size=image_size, grid=grid, backbone=backbone, output_stride=output_stride),
                family=_with_epochs(SYNTHETIC, {"show-tell": epochs, "attention": attention_epochs}))
        else:
            chosen = tuple(f.strip() for f in families.split(",") if f.strip())
            unknown = [f for f in chosen if f not in recipe.FAMILY]
            if unknown or not chosen:
                raise ValueError(f"--families: choose from {', '.join(recipe.FAMILY)}, got {families!r}")
            preset = replace(PHOTOS, families=chosen)
        if scst_epochs is not None:
            preset = replace(preset, scst=preset.scst | {"epochs": scst_epochs})
        run_demo(preset, data, images, out, cache_dir, progress, lang, tokenizer, precision)
    except (OSError, ValueError, WeightsUnavailableError) as e:
        raise _fail(e) from None


def _with_epochs(preset: recipe.Preset, epochs: dict[str, int]) -> dict[str, dict[str, dict]]:
    """The preset's per-family changes with each family's cross-entropy epochs set."""
    return {name: changes | {"train": changes.get("train", {}) | {"epochs": epochs[name]}} if name in epochs
            else changes for name, changes in preset.family.items()}


if __name__ == "__main__":
    app()
