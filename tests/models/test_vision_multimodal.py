"""The multimodal LM: patch encoder shapes, image splicing at placeholders, the cached path equal
to the full forward (an image in the middle of the sequence included), save / load."""

import pytest
import torch

from hysparse_kernels.models import KVCache
from hysparse_kernels.models.vision.multimodal import (IMAGE_TOKEN, PatchEncoder, VisionConfig, VisionLM,
                                                       load_vision_lm, save_vision_lm)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return VisionLM(VisionConfig(backbone="tiny-mimo-7b", image_size=32, patch=8)).eval()


def _ids(n):
    return [256] + [IMAGE_TOKEN] * n + list(b"Q: maze\n")


def test_patch_encoder_shapes():
    enc = PatchEncoder(VisionConfig(image_size=32, patch=8), 64)
    assert enc(torch.rand(3, 3, 32, 32)).shape == (3, 16, 64)
    with pytest.raises(ValueError, match="images: expected"):
        enc(torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match="patch"):
        VisionConfig(image_size=32, patch=5)


def test_logits_shape_and_image_dependence(lm):
    ids = torch.tensor([_ids(lm.n_patches)] * 2)
    images = torch.rand(2, 3, 32, 32)
    out = lm(ids, images)
    assert out.shape == (2, ids.shape[1], lm.graph.vocab)
    # the text after the image sees the image; the BOS before it does not
    other = lm(ids, torch.rand(2, 3, 32, 32))
    assert torch.equal(out[:, 0], other[:, 0])
    assert not torch.allclose(out[:, -1], other[:, -1])


def test_embed_splices_patches_and_keeps_text(lm):
    ids = torch.tensor([_ids(lm.n_patches)])
    image = torch.rand(1, 3, 32, 32)
    x = lm.embed(ids, image)
    text = ids[0] != IMAGE_TOKEN
    assert torch.equal(x[0, text], lm.lm.model.embed_tokens(ids[0, text]))
    assert torch.allclose(x[0, ~text], lm.vision(image)[0])


def test_placeholder_count_must_match_images(lm):
    ids = torch.tensor([_ids(lm.n_patches)])
    with pytest.raises(ValueError, match="images: expected"):
        lm(ids, None)
    with pytest.raises(ValueError, match="images: expected"):
        lm(ids, torch.rand(2, 3, 32, 32))


def test_cached_chunks_equal_full_forward_with_a_tool_image(lm):
    """Prefill (image 1), decode two tokens, append an observation with image 2, decode one more:
    the logits match the full forward over the whole sequence with both images."""
    n = lm.n_patches
    prompt = _ids(n)
    obs = list(b"> img_2 ") + [IMAGE_TOKEN] * n + [10]
    seq = prompt + [99, 10] + obs + [97]
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full = lm(torch.tensor([seq]), images)[0]
        cache = KVCache(lm.graph, 1, len(seq) + 4, dtype=torch.float32)
        parts = [lm(torch.tensor([prompt]), images[:1], cache)[0, -1]]
        parts.append(lm(torch.tensor([[99]]), None, cache)[0, -1])
        parts.append(lm(torch.tensor([[10]]), None, cache)[0, -1])
        parts.append(lm(torch.tensor([obs]), images[1:], cache)[0, -1])
        parts.append(lm(torch.tensor([[97]]), None, cache)[0, -1])
    at = [len(prompt) - 1, len(prompt), len(prompt) + 1, len(prompt) + 1 + len(obs), len(seq) - 1]
    for got, pos in zip(parts, at):
        torch.testing.assert_close(got, full[pos], atol=2e-4, rtol=2e-4)


def test_save_load_roundtrip(lm, tmp_path):
    save_vision_lm(lm, tmp_path / "m")
    save_vision_lm(lm, tmp_path / "m")  # over an existing checkpoint
    back = load_vision_lm(tmp_path / "m")
    ids = torch.tensor([_ids(lm.n_patches)])
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lm(ids, image), back(ids, image))
    with pytest.raises(FileNotFoundError, match="vision.json"):
        load_vision_lm(tmp_path / "missing")
