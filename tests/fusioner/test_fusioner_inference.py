"""Official inference protocol on ``tiny-fusioner``: windows, averaging, padding, modes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmpf.fusioner import FusionerInputError, SegmentOptions, TextEmbeddingCache, segment
from cmpf.fusioner.inference import (
    normalise, pad_to, predict_labels, sliding_window_logits, window_grid,
)

NAMES = ["cat", "dog", "diningtable"]


def test_window_grid_matches_the_official_layout():
    # 375 rows: starts 0, 149, 298; the last crop has 77 real rows (FUSIONER_SPEC §1.2)
    assert [w[:2] for w in window_grid(375, 200, 224, 149)] == [(0, 224), (149, 373), (298, 375)]
    assert len(window_grid(375, 500, 224, 149)) == 9
    assert len(window_grid(300, 400, 224, 149)) == 6
    assert window_grid(100, 150, 224, 149) == ((0, 224, 0, 224),)  # padded to one window
    assert window_grid(224, 224, 224, 149) == ((0, 224, 0, 224),)
    with pytest.raises(FusionerInputError):
        window_grid(300, 400, 224, 225)


@pytest.mark.parametrize("hw", [(300, 400), (230, 150), (224, 600)])
def test_windows_cover_every_pixel(hw):
    h, w = hw
    count = np.zeros((max(h, 224), max(w, 224)), int)
    for h0, h1, w0, w1 in window_grid(h, w, 224, 149):
        assert 0 < h1 - h0 <= 224 and 0 < w1 - w0 <= 224
        count[h0:h1, w0:w1] += 1
    assert count.min() >= 1


def test_sliding_window_averages_padded_window_logits(tiny_fusioner, tiny_image):
    """Recompute the 300×400 result by hand: pad, run each window alone, average by overlap count."""
    model = tiny_fusioner
    pixels = normalise(tiny_image)
    text = TextEmbeddingCache(model).embed(NAMES[:2])
    opts = SegmentOptions(mode="joint")
    logits, windows = sliding_window_logits(model, pixels, text, opts)
    assert logits.shape == (1, 2, 300, 400) and len(windows) == 6
    total, count = np.zeros((2, 300, 400)), np.zeros((300, 400))
    with torch.no_grad():
        for h0, h1, w0, w1 in windows:
            crop = torch.full((1, 3, 224, 224), -1.0)
            crop[:, :, : h1 - h0, : w1 - w0] = pixels[:, :, h0:h1, w0:w1]
            out = model(crop, text)[0].numpy()
            total[:, h0:h1, w0:w1] += out[:, : h1 - h0, : w1 - w0]
            count[h0:h1, w0:w1] += 1
    assert count.max() == 4  # the centre is covered by 2×2 windows
    np.testing.assert_allclose(logits[0].numpy(), total / count, rtol=0, atol=1e-5)


def test_small_image_is_padded_with_minus_one(tiny_fusioner):
    """Smaller than one window: no error, official pad to 224 (-1.0 in normalised space), crop back."""
    model = tiny_fusioner
    img = np.full((100, 150, 3), 200, np.uint8)
    seen = []
    handle = model.img_model.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    try:
        result = segment(model, img, ["cat"])
    finally:
        handle.remove()
    assert result.logits.shape == (1, 100, 150) and result.windows == ((0, 224, 0, 224),)
    (window,) = seen
    assert window.shape == (1, 3, 224, 224)
    assert torch.equal(window[:, :, :100, :150], normalise(img))
    assert (window[:, :, 100:] == -1.0).all() and (window[:, :, :, 150:] == -1.0).all()
    with torch.no_grad():
        text = TextEmbeddingCache(model).embed(["cat"])
        direct = model(pad_to(normalise(img), 224, -1.0), text)[0, :, :100, :150]
    torch.testing.assert_close(result.logits, direct, rtol=0, atol=0)


def test_per_class_is_k_runs_of_one_class(tiny_fusioner, tiny_image):
    model, tiny_image = tiny_fusioner, tiny_image[:200, 100:400]  # 2 windows
    cache = TextEmbeddingCache(model)
    per_class = segment(model, tiny_image, NAMES, text_cache=cache)
    for k, name in enumerate(NAMES):
        alone = segment(model, tiny_image, [name], SegmentOptions(mode="joint"), text_cache=cache)
        torch.testing.assert_close(per_class.logits[k], alone.logits[0], rtol=0, atol=1e-5)
        assert torch.equal(per_class.masks[k], torch.sigmoid(per_class.logits[k]) > 0.5)


def test_joint_mixes_classes_and_is_permutation_equivariant(tiny_fusioner, tiny_image):
    model, tiny_image = tiny_fusioner, tiny_image[:200, 100:400]  # 2 windows
    cache = TextEmbeddingCache(model)
    joint = segment(model, tiny_image, NAMES, SegmentOptions(mode="joint"), text_cache=cache)
    per_class = segment(model, tiny_image, NAMES, text_cache=cache)
    assert (joint.logits - per_class.logits).abs().max() > 1e-4  # text tokens attend to each other
    flipped = segment(model, tiny_image, NAMES[::-1], SegmentOptions(mode="joint"), text_cache=cache)
    torch.testing.assert_close(flipped.logits.flip(0), joint.logits, rtol=0, atol=1e-4)
    # joint masks are the one-hot labels: exclusive, background where no class passes
    assert joint.masks.sum(0).max() <= 1
    assert torch.equal(joint.masks.any(0), joint.labels > 0)
    assert torch.equal(joint.labels, predict_labels(joint.logits))


def test_prediction_rule_is_strict():
    # one class: sigmoid(0) = 0.5 is a tie with the background → background
    logits = torch.tensor([[[0.0, 1e-3, -1e-3]]])
    assert predict_labels(logits).tolist() == [[0, 1, 0]]
    # several classes: argmax of the probabilities if above 0.5, first class on a tie
    logits = torch.tensor([[[2.0, -1.0, 3.0, 1.0]], [[1.0, -2.0, 3.0, 1.0]]])
    assert predict_labels(logits).tolist() == [[1, 0, 1, 1]]


def test_normalise_is_albumentations_float32():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13
    for name, (mean, std) in {"pascal": ((0.4554, 0.4298, 0.3955), (0.1181, 0.1189, 0.1338)),
                              "coco": ((0.4650, 0.4357, 0.3973), (0.1152, 0.1153, 0.1352))}.items():
        m = np.array(mean, np.float32) * np.float32(255)
        r = np.reciprocal(np.array(std, np.float32) * np.float32(255))
        expected = ((img.astype(np.float32) - m) * r).transpose(2, 0, 1)[None]
        x = normalise(img, name)
        assert x.dtype == torch.float32 and x.shape == (1, 3, 2, 3)
        np.testing.assert_array_equal(x.numpy(), expected)
    assert not torch.equal(normalise(img, "pascal"), normalise(img, "coco"))
    # the pad value -1.0 is pixel ~(86, 79, 67) in the PASCAL statistics: neither zero nor the mean
    dark = np.array([[[86, 79, 67]]], np.uint8)
    assert normalise(dark)[0, :, 0, 0].sub(-1).abs().max() < 0.02


def test_text_cache_encodes_each_name_once(tiny_fusioner):
    model = tiny_fusioner
    cache = TextEmbeddingCache(model)
    first = cache.embed(["cat", "dog"])
    assert first.shape == (2, model.cfg.clip_embed_dim) and len(cache) == 2
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(2))
    again = cache.embed(["dog", "cat", "dog"])
    assert len(cache) == 2 and torch.equal(again, first[[1, 0, 1]])
    from cmpf.fusioner.prompts import tokenize_class

    with torch.no_grad():
        assert torch.equal(model.encode_class(tokenize_class("cat"))[0], first[0])


@pytest.mark.parametrize("names, message", [
    ([], "K=0"),
    ("cat", "list of names"),
    ([""], "empty"),
    (["cat", "very " * 70 + "long"], "at most 77"),
])
def test_bad_class_names(tiny_fusioner, tiny_image, names, message):
    with pytest.raises(ValueError, match=message) as err:
        segment(tiny_fusioner, tiny_image[:50, :50], names)
    assert isinstance(err.value, FusionerInputError) and "\n" not in str(err.value)


@pytest.mark.parametrize("image, message", [
    (np.zeros((50, 60, 3), np.float32), "uint8"),
    (np.zeros((50, 60), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((50, 60, 4), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((0, 60, 3), np.uint8), "empty"),
])
def test_bad_images(tiny_fusioner, image, message):
    with pytest.raises(FusionerInputError, match=message) as err:
        segment(tiny_fusioner, image, ["cat"])
    assert "\n" not in str(err.value)


def test_a_longest_name_that_fits_is_accepted(tiny_fusioner):
    from cmpf.fusioner.prompts import tokenize_class

    tokens = tokenize_class("very " * 60 + "long")
    assert tokens.shape == (32, 77) and tokens.dtype == torch.int64
    assert (tokens.argmax(-1) > 0).all()


def test_cache_of_another_model_is_refused(tiny_fusioner, tiny_image):
    from cmpf.fusioner import build_model

    other = TextEmbeddingCache(build_model("tiny-fusioner"))
    with pytest.raises(FusionerInputError, match="another model"):
        segment(tiny_fusioner, tiny_image[:10, :10], ["cat"], text_cache=other)


def test_options_validation():
    with pytest.raises(ValueError, match="mode"):
        SegmentOptions(mode="batch")
    with pytest.raises(ValueError, match="normalisation"):
        SegmentOptions(normalisation="clip")
    assert SegmentOptions().window_stride(224) == 149
    assert SegmentOptions(stride=100).window_stride(224) == 100


def test_image_types(tiny_image):
    from PIL import Image

    expected = normalise(tiny_image)
    assert torch.equal(normalise(torch.from_numpy(tiny_image)), expected)
    assert torch.equal(normalise(Image.fromarray(tiny_image)), expected)
