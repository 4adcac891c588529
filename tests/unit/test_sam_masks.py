"""Automatic SAM masks through the decoder runner vs segment-anything's ``SamAutomaticMaskGenerator``
on the same random weights and image; the graph wrapper vs SAM's modules; the masks-file loaders.

Random SAM weights give masks that cover the whole image (their boxes all collapse in NMS) and
tiny logits (stability 0 at offset 1.0). ``sharp_sam`` makes the small random SAM localised:
spatially constant transposed-conv kernels in the mask upscaling and 30× hypernetwork outputs; the
thresholds are lowered identically on both sides.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from cmpf.config import PRESETS, SAM_VIT_B
from cmpf.model.sam_encoder import build_sam
from cmpf.model.sam_mask_decoder import SamMaskDecoder, sam_mask_decoder_spec
from cmpf.sam_masks import (
    DECODER_INPUTS, DECODER_OUTPUTS, OPENSEG_MASKS, MasksFileError, SamFrame, SamMaskOptions, generate_masks,
    generate_masks_from_embedding, load_masks, predictor_pixels, upscale_logits,
)

TINY_SAM = PRESETS["tiny"].sam  # 256 input, 16×16 embedding, 64×64 low-res masks
LOW = dict(points_per_side=8, points_per_batch=20, pred_iou_thresh=0.03, stability_score_thresh=0.5,
           stability_score_offset=0.05)




def _sharpen(sam):
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30)
        for i in (0, 3):
            w = sam.mask_decoder.output_upscaling[i].weight
            w.copy_(w[..., :1, :1].expand_as(w))
    return sam


@pytest.fixture(scope="module")
def sharp_sam():
    torch.manual_seed(0)
    return _sharpen(build_sam(TINY_SAM))


@pytest.fixture(scope="module")
def image():
    """(96, 128, 3) uint8: eight coloured disks on black."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]
    img = np.zeros((96, 128, 3), np.uint8)
    for _ in range(8):
        cy, cx, r = rng.integers(0, 96), rng.integers(0, 128), rng.integers(6, 25)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return img


def runners(sam):
    module = SamMaskDecoder(sam).eval()

    def decoder(x):
        return dict(zip(DECODER_OUTPUTS, module(*(x[n] for n in DECODER_INPUTS))))

    def encoder(x):
        with torch.no_grad():
            return {"sam_embedding": sam.image_encoder(x["sam_pixel_values"])}

    return encoder, decoder


def pip_masks(sam, image, **kwargs):
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(sam, **kwargs).generate(image)


def assert_same_as_pip(mine, ref):
    assert len(mine) == len(ref)
    if not ref:
        return
    assert mine.masks.dtype == torch.bool and mine.logits.dtype == torch.float32
    assert torch.equal(mine.masks, torch.from_numpy(np.stack([r["segmentation"] for r in ref])))
    for field, key in (("predicted_iou", "predicted_iou"), ("stability_score", "stability_score"),
                       ("boxes", "bbox"), ("crop_boxes", "crop_box")):
        expected = torch.tensor([r[key] for r in ref], dtype=torch.float32)
        torch.testing.assert_close(getattr(mine, field), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mine.point_coords, torch.tensor([r["point_coords"][0] for r in ref],
                                                               dtype=torch.float32))
    assert mine.areas.tolist() == [r["area"] for r in ref]


CASES = {
    "lowered": LOW,
    "no-filters": dict(points_per_side=8, points_per_batch=20, pred_iou_thresh=0.0, stability_score_thresh=0.0),
    "defaults-8x8": dict(points_per_side=8),  # 0.88 / 0.95: no mask survives with random weights
}


@pytest.mark.parametrize("case", list(CASES))
def test_generate_matches_segment_anything(sharp_sam, image, case):
    encoder, decoder = runners(sharp_sam)
    options = SamMaskOptions(channel_order="rgb", **CASES[case])
    mine = generate_masks(torch.from_numpy(image).permute(2, 0, 1), encoder, decoder, options, TINY_SAM.img_size)
    ref = pip_masks(sharp_sam, image, **CASES[case])
    assert_same_as_pip(mine, ref)
    assert torch.equal(mine.masks, mine.logits > 0)  # logits: before any small-region clean-up
    if case != "defaults-8x8":
        assert len(ref) >= 4 and len({tuple(r["bbox"]) for r in ref}) == len(ref)  # a non-trivial set


@pytest.mark.slow
def test_generate_with_crops_matches_segment_anything(sharp_sam, image):
    encoder, decoder = runners(sharp_sam)
    kwargs = dict(LOW, crop_n_layers=1, crop_n_points_downscale_factor=2)
    mine = generate_masks(torch.from_numpy(image).permute(2, 0, 1), encoder, decoder,
                          SamMaskOptions(channel_order="rgb", source="image", **kwargs), TINY_SAM.img_size)
    assert_same_as_pip(mine, pip_masks(sharp_sam, image, **kwargs))


def test_bgr_quirk_is_the_vendored_predictor(sharp_sam, image):
    """``channel_order="bgr"`` (the default) feeds SAM what the official script did: pip on BGR."""
    encoder, decoder = runners(sharp_sam)
    kwargs = dict(LOW, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    mine = generate_masks(torch.from_numpy(image).permute(2, 0, 1), encoder, decoder, SamMaskOptions(**kwargs),
                          TINY_SAM.img_size)
    assert_same_as_pip(mine, pip_masks(sharp_sam, np.ascontiguousarray(image[..., ::-1]), **kwargs))


def test_from_embedding_and_max_masks(sharp_sam, image):
    """The embedding entry point gives the image entry point's masks; ``max_masks`` keeps the
    largest by area (stable), as the official script's sort-and-cut."""
    encoder, decoder = runners(sharp_sam)
    rgb = torch.from_numpy(image).permute(2, 0, 1)
    options = SamMaskOptions(channel_order="rgb", **LOW)
    full = generate_masks(rgb, encoder, decoder, options, TINY_SAM.img_size)
    pixels, frame = predictor_pixels(rgb, TINY_SAM.img_size, "rgb")
    embedding = encoder({"sam_pixel_values": pixels})["sam_embedding"]
    same = generate_masks_from_embedding(decoder, embedding, frame, options)
    assert torch.equal(same.masks, full.masks) and torch.equal(same.predicted_iou, full.predicted_iou)
    top = generate_masks_from_embedding(decoder, embedding, frame, dataclasses.replace(options, max_masks=3))
    order = sorted(range(len(full)), key=lambda i: -int(full.areas[i]))[:3]
    assert len(top) == 3 and torch.equal(top.masks, full.masks[order])
    with pytest.raises(ValueError, match="crop"):
        generate_masks_from_embedding(decoder, embedding, frame, dataclasses.replace(options, crop_n_layers=1))


def test_min_region_area(sharp_sam, image):
    encoder, decoder = runners(sharp_sam)
    kwargs = dict(LOW, min_mask_region_area=40)
    rgb = torch.from_numpy(image).permute(2, 0, 1)
    try:
        import cv2  # noqa: F401
    except ImportError:
        from cmpf.errors import MissingDependency

        with pytest.raises(MissingDependency, match="opencv"):
            generate_masks(rgb, encoder, decoder, SamMaskOptions(channel_order="rgb", **kwargs), TINY_SAM.img_size)
        return
    mine = generate_masks(rgb, encoder, decoder, SamMaskOptions(channel_order="rgb", **kwargs), TINY_SAM.img_size)
    assert_same_as_pip(mine, pip_masks(sharp_sam, image, **kwargs))


def test_decoder_wrapper_equals_predictor(sharp_sam, image):
    """The graph wrapper's outputs are ``SamPredictor.predict_torch``'s low-res logits and IoU, and
    ``upscale_logits`` is its ``postprocess_masks``."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sharp_sam)
    predictor.set_image(image)
    points = torch.tensor([[10.0, 20.0], [200.0, 100.0], [64.5, 3.25]])[:, None, :]
    labels = torch.tensor([[1.0], [0.0], [1.0]])
    masks, iou, low = predictor.predict_torch(points, labels, multimask_output=True, return_logits=True)
    got_low, got_iou = SamMaskDecoder(sharp_sam)(predictor.features, points, labels)
    spec = sam_mask_decoder_spec(PRESETS["tiny"])
    assert got_low.shape == (3, *spec.outputs[0].dims[1:]) and got_iou.shape == (3, 3)
    torch.testing.assert_close(got_low, low, rtol=0, atol=0)
    torch.testing.assert_close(got_iou, iou, rtol=0, atol=0)
    frame = SamFrame(predictor.original_size, predictor.input_size, TINY_SAM.img_size)
    torch.testing.assert_close(upscale_logits(got_low, frame), masks, rtol=0, atol=0)


def test_spec_names_and_shapes():
    from cmpf.spec import graph_specs

    spec = sam_mask_decoder_spec(PRESETS["tiny"])
    assert tuple(spec.input_names) == DECODER_INPUTS and tuple(spec.output_names) == DECODER_OUTPUTS
    vit_b = sam_mask_decoder_spec(PRESETS["frozenseg-convnext-large"])
    assert [t.dims for t in vit_b.inputs] == [(1, 256, 64, 64), ("num_points", 1, 2), ("num_points", 1)]
    assert [t.dims for t in vit_b.outputs] == [("num_points", 3, 256, 256), ("num_points", 3)]
    encoder = graph_specs(PRESETS["tiny"], {"res2": 8, "res3": 8, "res4": 8, "res5": 8}, 8)["sam_image_encoder"]
    assert encoder.input_names == ["sam_pixel_values"] and encoder.output_names == ["sam_embedding"]
    assert encoder.outputs[0].dims[1:] == spec.inputs[0].dims[1:]
    with pytest.raises(ValueError, match="no SAM"):
        sam_mask_decoder_spec(PRESETS["tiny-fcclip"])


def test_frames_and_options():
    from segment_anything.utils.transforms import ResizeLongestSide

    frame = SamFrame.predictor((480, 640), 1024)
    assert frame.input_size == (768, 1024)
    pts = np.array([[0.5, 0.5], [639.5, 100.0]])
    np.testing.assert_array_equal(frame.to_input_frame(pts), ResizeLongestSide(1024).apply_coords(pts, (480, 640)))
    warped = SamFrame.warped((480, 640), (800, 1067), (800, 1088), 1024)
    assert warped.input_size == (1024, round(1024 * 1067 / 1088))
    assert SamMaskOptions().pred_iou_thresh == 0.88 and SamMaskOptions().stability_score_thresh == 0.95
    assert (OPENSEG_MASKS.pred_iou_thresh, OPENSEG_MASKS.stability_score_thresh, OPENSEG_MASKS.min_mask_region_area,
            OPENSEG_MASKS.max_masks) == (0.8, 0.7, 100, 50)
    for bad in (dict(points_per_side=0), dict(max_masks=0), dict(channel_order="bgra"), dict(crop_n_layers=-1)):
        with pytest.raises(ValueError):
            SamMaskOptions(**bad)


@pytest.mark.slow
def test_vit_b_matches_segment_anything(image):
    """The ViT-B configuration (random weights), 4×4 points: about 2 min on 2 busy cores."""
    torch.manual_seed(0)
    sam = _sharpen(build_sam(SAM_VIT_B))
    encoder, decoder = runners(sam)
    kwargs = dict(points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    mine = generate_masks(torch.from_numpy(image).permute(2, 0, 1), encoder, decoder,
                          SamMaskOptions(channel_order="rgb", **kwargs), SAM_VIT_B.img_size)
    ref = pip_masks(sam, image, **kwargs)
    assert len(ref) >= 1
    assert_same_as_pip(mine, ref)


# -- precomputed masks --------------------------------------------------------------------------

def _records(h=30, w=40, n=3, rle="coco"):
    """Records as the vendored generator pickles them (output_mode 'coco_rle', 'preds' logits)."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        preds = rng.normal(size=(h, w)).astype(np.float32) + (i - 1)
        seg = np.asfortranarray(preds > 0)
        if rle == "coco":
            enc = mask_utils.encode(seg)
            enc["counts"] = enc["counts"].decode("utf-8")
        else:
            enc = seg
        out.append({"segmentation": enc, "area": int(seg.sum()), "bbox": [0, 0, w - 1, h - 1],
                    "predicted_iou": 0.9 - i / 10, "point_coords": [[1.5 * i, 2.0]], "stability_score": 0.8,
                    "crop_box": [0, 0, w, h], "preds": preds})
    return out


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_official_pickle(tmp_path, protocol):
    records = _records()
    path = tmp_path / "000001.pkl"
    path.write_bytes(pickle.dumps(records, protocol=protocol))
    got = load_masks(path, (30, 40))
    assert len(got) == 3 and got.masks.shape == (3, 30, 40)
    torch.testing.assert_close(got.logits, torch.from_numpy(np.stack([r["preds"] for r in records])))
    assert torch.equal(got.masks, got.logits > 0)
    torch.testing.assert_close(got.predicted_iou, torch.tensor([0.9, 0.8, 0.7]))
    torch.testing.assert_close(got.point_coords, torch.tensor([[0.0, 2.0], [1.5, 2.0], [3.0, 2.0]]))


def test_load_binary_records_and_npz(tmp_path):
    records = [{k: v for k, v in r.items() if k != "preds"} for r in _records(rle="array")]
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(records))
    got = load_masks(tmp_path / "a.pkl", (30, 40))
    assert torch.equal(got.masks, torch.from_numpy(np.stack([r["segmentation"] for r in records])))
    assert torch.equal(got.logits > 0, got.masks) and float(got.logits.abs().min()) == 20.0
    np.savez(tmp_path / "b.npz", masks=np.stack([r["segmentation"] for r in records]))
    npz = load_masks(tmp_path / "b.npz", (30, 40))
    assert torch.equal(npz.masks, got.masks) and torch.equal(npz.logits, got.logits)
    assert bool(npz.predicted_iou.isnan().all()) and npz.boxes.shape == (3, 4)
    logits = np.random.default_rng(0).normal(size=(2, 30, 40)).astype(np.float32)
    np.savez(tmp_path / "c.npz", masks=logits)
    assert torch.equal(load_masks(tmp_path / "c.npz", (30, 40)).logits, torch.from_numpy(logits))


class _Exploit:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def _bad_files(tmp_path):
    files = {
        "size": (pickle.dumps(_records(h=31)), "masks are 31x40 but the image is 30x40"),
        "empty": (pickle.dumps([]), "no masks"),
        "not-a-list": (pickle.dumps({"segmentation": np.zeros((30, 40))}), "list of mask records"),
        "not-records": (pickle.dumps([np.zeros((30, 40))]), "list of mask records"),
        "no-mask-field": (pickle.dumps([{"area": 3}]), "neither 'segmentation' nor 'preds'"),
        "code": (pickle.dumps([{"segmentation": _Exploit()}]), "refusing to load"),
        "garbage": (b"\x80\x04not a pickle", "not a readable masks pickle"),
    }
    out = []
    for name, (data, message) in files.items():
        (tmp_path / f"{name}.pkl").write_bytes(data)
        out.append((tmp_path / f"{name}.pkl", message))
    np.savez(tmp_path / "empty.npz", masks=np.zeros((0, 30, 40), bool))
    np.savez(tmp_path / "size.npz", masks=np.zeros((2, 30, 41), bool))
    np.savez(tmp_path / "nomasks.npz", logits=np.zeros((2, 30, 40)))
    np.savez(tmp_path / "rank.npz", masks=np.zeros((30, 40), bool))
    (tmp_path / "x.json").write_text("[]")
    return out + [(tmp_path / "empty.npz", "no masks"), (tmp_path / "size.npz", "30x41 but the image is 30x40"),
                  (tmp_path / "nomasks.npz", "no 'masks' array"), (tmp_path / "rank.npz", "3-D"),
                  (tmp_path / "x.json", "unknown masks format")]


def test_bad_masks_files_raise_one_line_value_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path, message in _bad_files(tmp_path):
        with pytest.raises(MasksFileError) as info:
            load_masks(path, (30, 40))
        text = str(info.value)
        assert isinstance(info.value, ValueError) and "\n" not in text, text
        assert text.startswith(str(path)) and message in text, text
    assert not (tmp_path / "pwned").exists()  # the pickle's os.system never ran
