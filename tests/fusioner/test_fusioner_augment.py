"""Fusioner's training crop and augmentation (``cmpf.fusioner.augment``): labels stay aligned, seeded, gated.

Alignment tests use images whose colour encodes the label (red = target, green = ignore), so a mask
moved differently from its image shows up as disagreement between the two.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cmpf.fusioner.augment import (
    AUGMENT, IGNORE, _ElasticTransform, augment_episode, augment_transform, crop_transform, training_transform,
)



@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: intra-op threads only contend (10x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# every step applied, colour and noise off: a purely geometric chain (crop, flip, elastic + affine, rotate)
GEOMETRIC = dataclasses.replace(AUGMENT["pascal-5i"], color_jitter=0.0, var_limit=(0.0, 0.0), p=1.0)


def _labelled(h=300, w=260):
    """Image whose red channel is the target (an asymmetric L) and green channel the ignore stripe."""
    target = np.zeros((h, w), bool)
    target[40:200, 30:90] = True
    target[160:200, 30:180] = True
    ignore = np.zeros((h, w), bool)
    ignore[230:250, 100:240] = True
    image = np.full((h, w, 3), 20, np.uint8)
    image[target, 0] = 230
    image[ignore, 1] = 230
    return image, target, ignore


def _agreement(crop, target, ignore):
    red, green = crop[..., 0] > 125, crop[..., 1] > 125
    return float(((red == target.numpy()) & (green == ignore.numpy())).mean())


def test_geometric_chain_keeps_mask_and_image_aligned():
    image, target, ignore = _labelled()
    transform = v2.Compose([crop_transform(224), augment_transform(GEOMETRIC)])
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        crop, t, i = augment_episode(transform, image, target, ignore, generator)
        assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
        assert t.shape == i.shape == (224, 224) and t.dtype == i.dtype == torch.bool and not (t & i).any()
        assert t.any()
        assert _agreement(crop, t, i) > 0.97  # only resampled edges may disagree (bilinear image, nearest mask)
        assert _agreement(crop[:, ::-1], t, i) < 0.9  # the check sees a mask flipped apart from its image


def test_mask_stays_label_valued_and_the_border_is_background():
    """Everything ignore (255); what the rotation / shift brings in is 0 = background with a black image."""
    image = np.zeros((224, 224, 3), np.uint8)
    image[..., 1] = 200
    mask = tv_tensors.Mask(torch.full((224, 224), IGNORE, dtype=torch.uint8))
    torch.manual_seed(3)
    out, labels = augment_transform(GEOMETRIC)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), mask)
    values = set(labels.unique().tolist())
    assert values == {0, IGNORE}  # nearest resampling: no in-between values; the border is not ignore
    border = labels == 0
    assert out[1][border].float().mean() < 40 and out[1][~border].float().mean() > 190


def test_same_seed_same_episode_and_other_seeds_differ():
    image, target, ignore = _labelled()
    transform = training_transform("pascal-5i")

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return [augment_episode(transform, image, target, ignore, generator) for _ in range(3)]

    first, again, other = draw(7), draw(7), draw(8)
    torch.rand(5)  # the global generator's state does not matter
    for (c1, t1, i1), (c2, t2, i2) in zip(first, again):
        assert np.array_equal(c1, c2) and torch.equal(t1, t2) and torch.equal(i1, i2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    assert not np.array_equal(first[0][0], first[1][0])  # successive draws differ


def test_the_block_is_applied_half_the_time():
    """``Compose(p=0.5)`` over five steps at p = 0.5: unchanged with probability 0.5 + 0.5 / 32."""
    block = augment_transform(dataclasses.replace(AUGMENT["pascal-5i"], elastic_sigma=1.0))  # a 16-px image
    image = tv_tensors.Image(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator()))
    torch.manual_seed(0)
    unchanged = sum(torch.equal(block(image), image) for _ in range(400)) / 400
    assert 0.43 < unchanged < 0.60
    always = augment_transform(dataclasses.replace(AUGMENT["pascal-5i"], elastic_sigma=1.0, p=1.0))
    assert not any(torch.equal(always(image), image) for _ in range(20))


def _steps(dataset):
    """The block's steps by class name, checking the gates: the block and each step at p = 0.5."""
    block = augment_transform(AUGMENT[dataset])
    assert isinstance(block, v2.RandomApply) and block.p == 0.5 and len(block.transforms) == 5
    assert all(t.p == 0.5 for t in block.transforms)
    return {type(s).__name__: s for t in block.transforms for s in getattr(t, "transforms", [t])}


@pytest.mark.parametrize("dataset, jitter, degrees", [("pascal-5i", 0.5, 20.0), ("coco-20i", 0.2, 10.0)])
def test_pascal_and_coco_parameters(dataset, jitter, degrees):
    steps = _steps(dataset)
    assert list(steps) == ["ColorJitter", "_GaussNoise", "RandomHorizontalFlip", "_AlphaAffine", "_ElasticTransform",
                           "RandomAffine"]  # the official order
    cj = steps["ColorJitter"]
    assert cj.brightness == cj.contrast == cj.saturation == pytest.approx((1 - jitter, 1 + jitter))
    assert cj.hue == pytest.approx((-jitter, jitter))
    affine = steps["RandomAffine"]
    assert affine.degrees == [-degrees, degrees] and affine.translate == (0.1, 0.1) and affine.scale == (0.9, 1.1)
    assert steps["_GaussNoise"].var_limit == (10.0, 50.0) and steps["_AlphaAffine"].alpha_affine == 20.0
    elastic = steps["_ElasticTransform"]
    assert elastic.alpha == [2.0, 2.0] and elastic.sigma == [50.0, 50.0]  # albumentations alpha 1 = 2 grid units


def test_separable_elastic_field_equals_torchvisions():
    image = tv_tensors.Image(torch.zeros(3, 64, 80, dtype=torch.uint8))
    for sigma in (2.0, 5.0):
        fields = []
        for cls in (_ElasticTransform, v2.ElasticTransform):
            torch.manual_seed(1)
            fields.append(cls(alpha=30.0, sigma=sigma).make_params([image])["displacement"])
        assert fields[0].shape == (1, 64, 80, 2)
        torch.testing.assert_close(fields[0], fields[1], rtol=1e-5, atol=1e-7)


def test_gauss_noise_variance_is_on_the_0_255_scale():
    from cmpf.fusioner.augment import _GaussNoise

    image = tv_tensors.Image(torch.full((3, 128, 128), 128, dtype=torch.uint8))
    torch.manual_seed(0)
    var = [float((_GaussNoise((30.0, 30.0))(image).float() - 128).var()) for _ in range(3)]
    assert all(24 < v < 36 for v in var)  # int16 truncation lowers it slightly from 30


def test_without_augment_only_the_crop():
    image, target, ignore = _labelled()

    def blues(augment):  # the blue channel is 20 everywhere: only colour, noise or a filled border change it
        transform, generator = training_transform("coco-20i", augment=augment), torch.Generator().manual_seed(0)
        return [set(np.unique(augment_episode(transform, image, target, ignore, generator)[0][..., 2]).tolist())
                for _ in range(8)]

    assert isinstance(training_transform("coco-20i", augment=False), v2.RandomChoice)  # the two crops
    assert blues(False) == [{20}] * 8
    assert blues(True) != [{20}] * 8


def test_cli_no_augment_reaches_the_config(monkeypatch, tmp_path):
    import cmpf.fusioner.train as train
    from cmpf.cli import main

    seen = []
    monkeypatch.setattr(train, "train_fusioner", lambda cfg: seen.append(cfg) or {"checkpoint": "x"})
    common = ["train", "--model", "tiny-fusioner", "--dataset", "coco-20i", "--data-root", str(tmp_path), "--splits",
              str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(common) == 0 and main(common + ["--no-augment"]) == 0
    assert [cfg.augment for cfg in seen] == [True, False] and seen[0].dataset == "coco-20i"
    assert main(["train", "--model", "tiny", "--out", str(tmp_path / "r"), "--no-augment"]) == 2
