"""timm:NAME encoders (offline, random or locally saved weights): ViT patch tokens on their grid, a ConvNeXt's map,
through train -> caption -> ONNX; weights files, the Hugging Face cache, and the errors a user sees."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from captioner.cli import app
from captioner.features import fingerprint
from captioner.models.encoder import Encoder
from captioner.search import Search

VIT, CONVNEXT = "timm:vit_tiny_patch16_224", "timm:convnext_atto"
runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@torch.inference_mode()
def test_vit_patch_tokens_become_the_grid_without_the_class_token() -> None:
    encoder = Encoder(VIT, "none", grid=2, image_size=64).eval()  # 4 x 4 patches of 16 px, pooled to 2 x 2
    images = torch.randn(2, 3, 64, 64)
    tokens = encoder.backbone.model.forward_features(images)
    assert tokens.shape == (2, 1 + 16, 192) and encoder.feature_size == 192
    patches = tokens[:, 1:].reshape(2, 4, 4, 192)  # row-major patch order
    cells = patches.reshape(2, 2, 2, 2, 2, 192).mean((2, 4)).reshape(2, 4, 192)  # each 2 x 2 block of patches
    assert torch.allclose(encoder(images), cells, atol=1e-5)
    assert encoder.spec.mean == (0.5, 0.5, 0.5)  # the model's own normalisation, not ImageNet's


@torch.inference_mode()
def test_dinov2_register_tokens_are_dropped_too() -> None:
    encoder = Encoder("timm:vit_small_patch14_reg4_dinov2", "none", grid=2, image_size=28).eval()  # 2 x 2 patches
    images = torch.randn(1, 3, 28, 28)
    tokens = encoder.backbone.model.forward_features(images)
    assert tokens.shape[1] == 1 + 4 + 4  # class, 4 registers, 4 patches
    assert torch.allclose(encoder(images), tokens[:, 5:], atol=1e-5)


@torch.inference_mode()
def test_convnext_gives_its_last_map_pooled_to_the_grid() -> None:
    encoder = Encoder(CONVNEXT, "none", grid=1).eval()
    images = torch.randn(2, 3, 64, 64)
    expected = encoder.backbone.model.forward_features(images).mean((2, 3))
    assert encoder.feature_size == 320
    assert torch.allclose(encoder(images)[:, 0], expected, atol=1e-5)


@pytest.mark.parametrize("backbone", [VIT, CONVNEXT])
def test_a_timm_model_trains_captions_and_exports_to_onnx_with_the_same_captions(backbone: str, tiny_synth: Path,
                                                                                 tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from captioner.export.runner import load_onnx
    from captioner.inference import load

    run, size = tmp_path / "run", ["--image-size", 32] if backbone == VIT else []  # ConvNeXt: its own 224 px
    result = invoke("train", "--data", tiny_synth, "--out", run, "--backbone", backbone, "--encoder-weights", "none",
                    *size, "--grid", 2, "--embed-size", 16, "--hidden-size", 32, "--epochs", 1, "--batch-size", 16,
                    "--val-images", 2, "--threshold", 1, "--early-stop", 0, "--cache-dir", tmp_path / "cache",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == backbone and config["image_size"] == (32 if size else 224)
    images = sorted((tiny_synth / "test").glob("*.png"))[:3]
    result = invoke("caption", "--model", run, "--beam", 2, *images)
    assert result.exit_code == 0, result.output
    assert result.output.count("\t") == 3
    result = invoke("export", "--model", run, "--onnx", tmp_path / "onnx")
    assert result.exit_code == 0, result.output
    from PIL import Image

    pictures = [Image.open(p) for p in images]
    expected = [c.text for row in load(run, "cpu").caption(pictures, Search(beam=2)) for c in row]
    got = [c.text for row in load_onnx(tmp_path / "onnx").caption(pictures, Search(beam=2)) for c in row]
    assert got == expected and all(expected)
    preprocess = json.loads((tmp_path / "onnx" / "preprocess.json").read_text())
    assert preprocess["image_size"] == config["image_size"]
    assert preprocess["mean"] == ([0.5] * 3 if backbone == VIT else pytest.approx([0.485, 0.456, 0.406]))


@torch.inference_mode()
def test_weights_saved_to_a_safetensors_file_give_bit_identical_features(tmp_path: Path) -> None:
    source = Encoder(VIT, "none", grid=2, seed=3, image_size=32).eval()
    file = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.model.state_dict().items()}, str(file))
    loaded = Encoder(VIT, str(file), grid=2, seed=0, image_size=32).eval()
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded(images), source(images))
    assert not torch.equal(Encoder(VIT, "none", grid=2, seed=0, image_size=32).eval()(images), source(images))
    # the cache key follows the file's content, not its name
    key = fingerprint(VIT, str(file), 0, 32, 1, [])
    assert key != fingerprint(VIT, "none", 0, 32, 1, [])
    save_file({k: v.contiguous() + 1 for k, v in source.backbone.model.state_dict().items()}, str(file))
    assert fingerprint(VIT, str(file), 0, 32, 1, []) != key


def test_a_weights_file_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in Encoder(CONVNEXT, "none").backbone.model.state_dict().items()}, str(file))
    with pytest.raises(ValueError, match=r"does not fit timm:vit_tiny_patch16_224: missing \[") as e:
        Encoder(VIT, str(file), image_size=32)
    assert str(file) in str(e.value)
    with pytest.raises(ValueError, match="not a .safetensors file"):
        Encoder(VIT, str(tmp_path / "missing.pt"), image_size=32)


def _fake_hub_cache(cache: Path, repo: str, state: dict[str, torch.Tensor]) -> None:
    """The layout huggingface_hub leaves after downloading ``repo``'s model.safetensors."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))


@torch.inference_mode()
def test_hub_weights_load_from_the_local_cache_without_a_network(tmp_path: Path, monkeypatch) -> None:
    import timm
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(5)
    classifier = timm.create_model("convnext_atto")  # as published: with its ImageNet head
    _fake_hub_cache(tmp_path / "hub", "timm/convnext_atto.d2_in1k", classifier.state_dict())
    encoder = Encoder(CONVNEXT, "hub", grid=1).eval()
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(encoder(images)[:, 0], classifier.eval().forward_features(images).mean((2, 3)))


def test_hub_weights_offline_are_a_clear_error_naming_the_repository(tiny_synth: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = invoke("train", "--data", tiny_synth, "--out", tmp_path / "run", "--backbone",
                    "timm:vit_base_patch16_clip_224.openai", "--encoder-weights", "hub", "--no-progress")
    assert result.exit_code == 2, result.output
    assert "timm/vit_base_patch16_clip_224.openai" in result.output
    assert "huggingface-cli download timm/vit_base_patch16_clip_224.openai" in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unknown_timm_name_lists_close_matches(tiny_synth: Path, tmp_path: Path) -> None:
    result = invoke("train", "--data", tiny_synth, "--out", tmp_path / "run", "--backbone", "timm:convnext_tiyn",
                    "--no-progress")
    assert result.exit_code == 2, result.output
    assert "unknown timm model 'convnext_tiyn'" in result.output and "timm:convnext_tiny" in result.output
    assert "Traceback" not in result.output
