"""--precision: the choice for each processor, bf16 where it is emulated, the cache key, bf16 features on photos."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner import precision
from captioner.features import encode_images, fingerprint

AMX = frozenset({"avx512f", "amx_tile", "amx_bf16", "amx_int8"})
AVX512_BF16 = frozenset({"avx512f", "avx512_bf16"})
PLAIN = frozenset({"avx2", "avx512f"})


@pytest.mark.parametrize(("requested", "device", "flags", "chosen"), [
    ("auto", "cpu", AMX, "bf16"), ("auto", "cpu", AVX512_BF16, "bf16"), ("auto", "cpu", PLAIN, "fp32"),
    ("auto", "cpu", frozenset(), "fp32"), ("auto", "cuda", frozenset(), "bf16"), ("fp32", "cpu", AMX, "fp32"),
    ("fp32", "cuda", frozenset(), "fp32"), ("bf16", "cpu", AMX, "bf16"), ("bf16", "cuda", frozenset(), "bf16"),
])
def test_the_precision_is_chosen_by_what_the_processor_multiplies_natively(requested, device, flags, chosen) -> None:
    warned: list[str] = []
    assert precision.choose(requested, device, flags, warned.append) == chosen
    assert not warned


def test_bf16_asked_for_on_a_cpu_without_bf16_units_is_a_warning_not_a_crash() -> None:
    warned: list[str] = []
    assert precision.choose("bf16", "cpu", PLAIN, warned.append) == "bf16"
    assert len(warned) == 1 and "emulated" in warned[0] and "auto" in warned[0]
    x = torch.randn(4, 8)
    with precision.autocast("bf16", "cpu"):  # runs wherever torch runs, units or not
        y = torch.nn.functional.linear(x, torch.randn(3, 8))
    assert y.dtype == torch.bfloat16


def test_an_unknown_precision_is_a_clear_error_listing_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision.choose("fp16", "cpu", AMX)


def test_float32_caches_keep_their_key_and_bf16_ones_get_their_own(tmp_path: Path) -> None:
    paths = [tmp_path / "a.jpg"]
    args = ("efficientnet_lite0", "imagenet", 0, 224, 1, paths)
    assert fingerprint(*args) == fingerprint(*args, precision="fp32")
    assert fingerprint(*args, precision="bf16") != fingerprint(*args)


@pytest.mark.skipif(not os.environ.get("CAPTIONER_SHARED"), reason="needs CAPTIONER_SHARED (real Flickr8k photos)")
def test_bf16_features_of_real_photos_point_where_float32_ones_do(tmp_path: Path) -> None:
    """The encoder pass in bf16 autocast keeps the photos' grid features at a mean cosine >= 0.999 of float32's, none
    below 0.995 (the README's 200-photo figures come from benchmarks/precision_bench.py)."""
    folder = Path(os.environ["CAPTIONER_SHARED"]) / "data" / "flickr8k" / "Flicker8k_Dataset"
    paths = sorted(folder.glob("*.jpg"))[:8]
    feats = {p: encode_images(paths, "efficientnet_lite0", "imagenet", 0, 224, cache_dir=tmp_path, progress=False,
                              grid=3, precision=p, log=lambda _: None)[0][:, 0] for p in ("fp32", "bf16")}
    a, b = (torch.from_numpy(np.asarray(feats[p], dtype=np.float32)).flatten(1) for p in ("fp32", "bf16"))
    assert not torch.equal(a, b)  # two caches, two passes
    cosine = torch.nn.functional.cosine_similarity(a, b)
    assert cosine.mean() >= 0.999 and cosine.min() >= 0.995


def test_bf16_training_clips_the_gradients_of_its_fused_adam(tiny_synth, tmp_path, monkeypatch) -> None:
    """Lightning's own "bf16-mixed" raises on clipping a fused optimizer's gradients (a float16 loss scaler would
    leave them scaled); bfloat16 has none, so training clips them at --clip, and Adam stays fused."""
    from captioner.training.module import CaptionModule
    from captioner.training.run import TrainConfig, train

    clipped, optimizers = [], []
    clip, configure = torch.nn.utils.clip_grad_norm_, CaptionModule.configure_optimizers
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, norm, *a, **k: clipped.append(norm) or
                        clip(p, norm, *a, **k))
    monkeypatch.setattr(CaptionModule, "configure_optimizers", lambda self: optimizers.append(configure(self)) or
                        optimizers[-1])
    train(TrainConfig(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=1, batch_size=8, threshold=1,
                      val_images=8, cache_dir=str(tmp_path / "cache"), ema=0.0, early_stop=0, progress=False,
                      precision="bf16", clip=2.5),
          dict(decoder="attention", backbone="resnet18", encoder_weights="none", image_size=64, grid=2,
               embed_size=16, hidden_size=32, attention_size=8, context_size=8))
    optimizer = optimizers[0]["optimizer"] if isinstance(optimizers[0], dict) else optimizers[0]
    assert optimizer.defaults["fused"] and clipped and set(clipped) == {2.5}
