"""Odd but valid images keep working: 16-bit, CMYK, palette, alpha (opaque or not), grayscale, EXIF-rotated,
animated (first frame) and unicode file names, through ``load_image`` and through ``cmpf run``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CLASSES, cli, random_image
from PIL import Image

from cmpf.preprocess import ImageError, check_image_size, load_image


def _odd_images(d):
    rgb = random_image(24, 32, 3)
    files = {}
    Image.fromarray((np.arange(24 * 32).reshape(24, 32) * 60).astype(np.uint16)).save(d / "deep16.png")
    files["deep16.png"] = (24, 32)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    files["cmyk.jpg"] = (24, 32)
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    files["palette.png"] = (24, 32)
    Image.fromarray(np.dstack([rgb, np.full((24, 32), 255, np.uint8)])).save(d / "opaque_alpha.png")
    files["opaque_alpha.png"] = (24, 32)
    Image.fromarray(np.dstack([rgb, np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)])).save(d / "translucent.png")
    files["translucent.png"] = (24, 32)
    Image.fromarray(np.dstack([rgb[..., 1], np.full((24, 32), 7, np.uint8)]), "LA").save(d / "gray_alpha.png")
    files["gray_alpha.png"] = (24, 32)
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    files["gray.png"] = (24, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(rgb).save(d / "rotated.jpg", exif=exif)
    files["rotated.jpg"] = (32, 24)
    frames = [Image.fromarray(random_image(24, 32, s)) for s in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    files["animated.gif"] = (24, 32)
    Image.fromarray(rgb).save(d / "ünïcødé 画像.png")
    files["ünïcødé 画像.png"] = (24, 32)
    return files


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    return d, _odd_images(d)


def test_odd_formats_load_as_uint8_rgb_in_display_orientation(odd):
    d, files = odd
    for name, (h, w) in files.items():
        image = load_image(d / name)
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, h, w), name
    assert load_image(d / "deep16.png").max() == round(767 * 60 / 257)  # 16-bit range scaled to 8 bits
    rgb = np.asarray(Image.open(d / "opaque_alpha.png"))[..., :3]
    # alpha dropped, the colours kept as stored (detectron2's read_image, so the official model's input)
    assert np.array_equal(load_image(d / "translucent.png").permute(1, 2, 0).numpy(), rgb)
    assert (load_image(d / "gray_alpha.png").numpy() == rgb[..., 1]).all()
    first = np.asarray(Image.open(d / "animated.gif").convert("RGB"))
    assert np.array_equal(load_image(d / "animated.gif").permute(1, 2, 0).numpy(), first)


def test_odd_formats_and_unicode_names_run_end_to_end(odd, tmp_path, capsys):
    d, files = odd
    r = cli(["run", *[d / n for n in files], "--model", "tiny", "--no-resize", "--classes", CLASSES, "--out",
             tmp_path / "o"], capsys)
    assert r.code == 0, r.err[-2000:]
    for name in files:
        stem = name.rsplit(".", 1)[0]
        assert (tmp_path / "o" / "semantic" / f"{stem}.png").is_file(), name
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no staging directory left


@pytest.mark.parametrize("h, w, words", [(3, 40, "too small"), (10, 700, "aspect ratio"), (700, 10, "aspect ratio")])
def test_tensor_inputs_at_the_limits_are_refused_by_the_python_api(h, w, words):
    from cmpf.preprocess import prepare_inputs

    with pytest.raises(ImageError, match=words):
        prepare_inputs([torch.zeros(3, h, w, dtype=torch.uint8)])


def test_size_limits_accept_the_boundaries():
    check_image_size(4, 4, "x")
    check_image_size(10, 640, "x")
    with pytest.raises(ImageError, match="--max-pixels 1010"):
        check_image_size(10, 101, "x", max_pixels=1000)
