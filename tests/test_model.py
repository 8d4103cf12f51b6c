"""Encoder, decoder, decoding and the model artifact on tiny models."""
from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image

from captioner.data.vocab import END, PAD, START, UNK, Vocabulary
from captioner.decode import beam_search, greedy
from captioner.models.captioner import Captioner, ModelConfig, load
from captioner.models.decoder import Decoder, caption_loss
from captioner.models.encoder import Encoder, WeightsUnavailableError, build_backbone, weights_file

CAPTIONS = ["a red circle on the left", "a blue square above a green triangle", "a small red square on the right"]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build(CAPTIONS, threshold=1)


@pytest.fixture(scope="module")
def model(vocab: Vocabulary) -> Captioner:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=len(vocab), backbone="resnet18", encoder_weights="none", image_size=32,
                         embed_size=16, hidden_size=32)
    return Captioner(config, vocab).eval()


def test_unknown_backbone_lists_choices() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("vgg99", "none")


def test_missing_imagenet_weights_fail_fast_with_remedies(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("resnet50", "imagenet")
    assert time.perf_counter() - start < 15
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-") in message
    assert "--encoder-weights none" in message


def test_imagenet_weights_load_from_the_hub_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference, _ = build_backbone("resnet18", "none", seed=7)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    state |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    weights_file("resnet18").parent.mkdir(parents=True)
    torch.save(state, weights_file("resnet18"))
    loaded, dim = build_backbone("resnet18", "imagenet")
    assert dim == 512
    assert torch.equal(loaded.state_dict()["layer4.1.conv2.weight"], reference.state_dict()["layer4.1.conv2.weight"])


def test_encoder_is_frozen_unless_fine_tuned() -> None:
    frozen = Encoder("resnet18", "none", embed_size=8)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.embed.parameters())
    tuned = Encoder("resnet18", "none", embed_size=8, fine_tune=True)
    trainable = {n.split(".")[0] for n, p in tuned.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    tuned.train()
    assert not tuned.backbone.training and tuned.norm.training
    assert tuned(torch.randn(2, 3, 32, 32)).shape == (2, 8)


def test_random_weights_are_seeded() -> None:
    a, _ = build_backbone("resnet18", "none", seed=1)
    b, _ = build_backbone("resnet18", "none", seed=1)
    c, _ = build_backbone("resnet18", "none", seed=2)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_decoder_packed_matches_unpadded_and_loss_ignores_padding() -> None:
    torch.manual_seed(0)
    dec = Decoder(vocab_size=12, embed_size=8, hidden_size=16)
    image = torch.randn(2, 8)
    short = torch.tensor([[START, 5, 6, END]])
    padded = torch.tensor([[START, 5, 6, END, PAD, PAD], [START, 7, 8, 9, 10, END]])
    logits = dec(image, padded, torch.tensor([4, 6]))
    assert logits.shape == (2, 5, 12)
    alone = dec(image[:1], short)
    assert torch.allclose(logits[0, :3], alone[0], atol=1e-6)
    loss_a = caption_loss(logits[:1, :3], short)
    loss_b = caption_loss(logits[:1], padded[:1])
    assert torch.allclose(loss_a, loss_b)


def test_greedy_equals_beam_of_one_and_beams_are_sorted(model: Captioner) -> None:
    image = torch.randn(3, 16)
    g = greedy(model.decoder, image, max_len=8)
    b1 = beam_search(model.decoder, image, beam=1, max_len=8)
    assert [h[0] for h in g] == [row[0][0] for row in b1]
    b3 = beam_search(model.decoder, image, beam=3, max_len=8)
    for row in b3:
        assert len(row) == 3
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(ids) for ids, _ in row}) == 3
        assert all(len(ids) <= 8 and not {PAD, START, END, UNK} & set(ids) for ids, _ in row)
    assert b3[0][0][1] >= b1[0][0][1] - 1e-5


def test_beam_falls_back_when_no_beam_ends(vocab: Vocabulary) -> None:
    dec = Decoder(len(vocab), 8, 16)
    with torch.no_grad():
        dec.out.bias[END] = -1e4  # <end> never wins
    for row in beam_search(dec, torch.randn(2, 8), beam=2, max_len=5):
        assert len(row) == 2 and all(len(ids) == 5 for ids, _ in row)
    assert all(len(ids) == 5 for ids, _ in greedy(dec, torch.randn(2, 8), max_len=5))


def test_caption_text_has_no_special_tokens(model: Captioner) -> None:
    images = [Image.new("L", (40, 30), 128), Image.new("RGBA", (30, 50), (255, 0, 0, 0)), Image.new("CMYK", (32, 32))]
    for hyps in model.caption(images, beam=3):
        for text, score in hyps:
            assert "<" not in text and score <= 0


def test_artifact_round_trip(model: Captioner, tmp_path) -> None:
    folder = model.save(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
    again = load(folder)
    image = torch.randn(2, 16)
    assert model.generate(image, beam=2) == again.generate(image, beam=2)


def test_artifact_errors_name_the_file(model: Captioner, tmp_path) -> None:
    folder = model.save(tmp_path / "m")
    (folder / "vocab.json").write_text(json.dumps({"itos": ["<pad>", "<start>", "<end>", "<unk>", "x"]}))
    with pytest.raises(ValueError, match="vocab.json"):
        load(folder)
    model.save(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"hidden_size": 64}))
    with pytest.raises(ValueError, match="model.safetensors"):
        load(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load(folder)
    with pytest.raises(FileNotFoundError, match="not found"):
        load(tmp_path / "nowhere")


def test_output_stride_dilates_the_last_stages() -> None:
    trunk, dim = build_backbone("resnet50", "none", output_stride=8)
    assert dim == 2048 and trunk.layer4[1].conv2.dilation == (4, 4) and trunk.layer3[0].conv2.stride == (1, 1)
    assert trunk(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
    with pytest.raises(ValueError, match="bottleneck"):
        build_backbone("resnet18", "none", output_stride=16)
    with pytest.raises(ValueError, match="32, 16 or 8"):
        build_backbone("resnet50", "none", output_stride=4)


def test_pooled_features_are_standardised_before_the_embedding() -> None:
    encoder = Encoder("resnet18", "none", embed_size=8).train()
    pooled = 50 + 0.1 * torch.randn(64, 512)
    encoder.project(pooled)
    assert torch.allclose(encoder.standardize.running_mean, 0.1 * 50 * torch.ones(512), atol=0.1)
    assert encoder.project(pooled[:1]).shape == (1, 8)  # a one-caption batch still works
