import numpy as np
import pytest
import torch
from PIL import Image

from cmpf.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from cmpf.preprocess import ImageError, load_image, pad_batch, prepare_inputs, resize_shortest_edge, resized_shape


@pytest.mark.parametrize("hw, expected", [((300, 400), (800, 1067)), ((400, 300), (1067, 800)),
                                          ((100, 1000), (133, 1333)), ((800, 1067), (800, 1067))])
def test_resized_shape_follows_detectron2(hw, expected):
    assert resized_shape(*hw, 800, 1333) == expected


def test_resize_is_pillow_bilinear_on_uint8():
    img = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (3, 30, 40), dtype=np.uint8))
    out = resize_shortest_edge(img, 80, 1333)
    ref = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((107, 80), Image.BILINEAR))
    assert out.dtype == torch.uint8 and out.shape == (3, 80, 107)
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), ref)


def test_inputs_are_normalised_padded_and_warped():
    img = torch.full((3, 50, 70), 200, dtype=torch.uint8)
    inp = prepare_inputs([img], sam_size=128)
    assert inp.clip_pixels.shape == (1, 3, 64, 96) and inp.sam_pixels.shape == (1, 3, 128, 128)
    expected = (200 - CLIP_PIXEL_MEAN[0]) / CLIP_PIXEL_STD[0]
    assert torch.allclose(inp.clip_pixels[0, 0, :50, :70], torch.tensor(expected))
    assert inp.clip_pixels[0, :, 50:].abs().max() == 0 and inp.clip_pixels[0, :, :, 70:].abs().max() == 0
    assert inp.image_sizes == ((50, 70),)


def test_pad_batch_pads_to_common_multiple():
    out = pad_batch([torch.ones(3, 33, 20), torch.ones(3, 10, 70)], 32)
    assert out.shape == (2, 3, 64, 96)
    assert out[0, :, :33, :20].min() == 1 and out[0, :, 33:].max() == 0


def _save(tmp_path, name, array, mode=None):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_load_image_converts_safe_formats(tmp_path):
    gray = _save(tmp_path, "g.png", np.full((5, 6), 7, np.uint8))
    assert load_image(gray).shape == (3, 5, 6) and load_image(gray).max() == 7
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 3] = 255
    assert load_image(_save(tmp_path, "a.png", rgba)).shape == (3, 5, 6)
    deep = _save(tmp_path, "d.png", np.full((5, 6), 65535, np.uint16))
    assert load_image(deep).max() == 255


def test_load_image_rejects_bad_input(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "x.png")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    good = _save(tmp_path, "ok.png", np.zeros((64, 64, 3), np.uint8))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        load_image(tmp_path / "trunc.png")
