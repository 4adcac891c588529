"""The SAM-mask merge against the official ``geo_with_sam_inference`` rule, on hand-made masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmpf.sam_ensemble import (
    SamEnsembleOptions, classify_sam_masks, mask_classifier_runner, resize_sam_logits, sam_masks_for_pooling,
    sam_semantic_ensemble,
)

OFFICIAL = SamEnsembleOptions()


def official_geo_with_sam_inference(mask_cls, mask_pred, sam_mask_pred, sam_mask_cls, category_overlapping_mask,
                                    alpha=0.2):
    """FZ:frozenseg/frozenseg.py::geo_with_sam_inference at 647cf68, with ``self.*`` made arguments."""
    if sam_mask_cls is None:
        return torch.einsum("qc,qhw->chw", F.softmax(mask_cls, dim=-1)[..., :-1], mask_pred.sigmoid())
    mask_cls = F.softmax(mask_cls, dim=-1)[..., :-1]
    sam_mask_cls = F.softmax(sam_mask_cls, dim=-1)[..., :-1].squeeze(0)
    mask_pred = mask_pred.sigmoid()
    sam_mask_pred = sam_mask_pred.sigmoid()
    beta = 0.0
    in_mask_cls = mask_cls * category_overlapping_mask.view(1, -1)
    out_mask_cls = mask_cls * (1 - category_overlapping_mask).view(1, -1)
    out_mask_cls = out_mask_cls * (1 - alpha)
    in_mask_cls = in_mask_cls * (1 - beta)
    out_sam_mask_cls = sam_mask_cls * (1 - category_overlapping_mask).view(1, -1)
    sam_mask_left = out_sam_mask_cls.max(dim=1).values > 0.5
    out_sam_mask_cls = out_sam_mask_cls[sam_mask_left] * alpha
    out_sam_mask_pred = sam_mask_pred[sam_mask_left]
    in_semseg = torch.einsum("qc,qhw->chw", in_mask_cls, mask_pred)
    out_semseg = torch.einsum("qc,qhw->chw", out_mask_cls, mask_pred)
    if not out_sam_mask_cls.shape[0] == 0:
        out_sam_semseg = torch.einsum("mc,mhw->chw", out_sam_mask_cls, out_sam_mask_pred)
    else:
        out_sam_semseg = torch.zeros_like(out_semseg)
    return in_semseg + out_semseg + out_sam_semseg


def _disk(h, w, cy, cx, r, inside=6.0, outside=-6.0):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, inside, outside)


@pytest.fixture
def hand_made():
    """4 classes (0, 2 seen; 1, 3 unseen), 3 queries, 4 SAM disks: two confidently unseen (kept),
    one confidently seen (dropped), one ambiguous (dropped)."""
    h, w = 24, 32
    mask_logits = torch.stack([_disk(h, w, 6, 8, 5), _disk(h, w, 16, 20, 7), _disk(h, w, 12, 28, 4)])
    mask_cls = torch.log(torch.tensor([[0.6, 0.2, 0.1, 0.05, 0.05], [0.1, 0.7, 0.1, 0.05, 0.05],
                                       [0.05, 0.05, 0.1, 0.7, 0.1]]) + 1e-8)
    sam_logits = torch.stack([_disk(h, w, 5, 5, 4), _disk(h, w, 18, 22, 6), _disk(h, w, 10, 10, 8),
                              _disk(h, w, 20, 4, 3)])
    probs = torch.tensor([[0.02, 0.9, 0.03, 0.03, 0.02], [0.05, 0.05, 0.05, 0.8, 0.05],
                          [0.9, 0.02, 0.04, 0.02, 0.02], [0.3, 0.3, 0.1, 0.2, 0.1]])
    seen = torch.tensor([1.0, 0.0, 1.0, 0.0])
    return mask_cls, mask_logits, sam_logits, probs.log(), seen


def test_merge_equals_official_rule(hand_made):
    mask_cls, mask_logits, sam_logits, sam_cls, seen = hand_made
    got = sam_semantic_ensemble(mask_cls, mask_logits, sam_logits, sam_cls, seen, OFFICIAL)
    ref = official_geo_with_sam_inference(mask_cls, mask_logits, sam_logits, sam_cls[None], seen)
    assert got.shape == (4, 24, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    # by hand: unseen class 1 = 0.8 · Σ_q p σ(m) + 0.2 · (0.9 σ(sam 0) + 0.05 σ(sam 1)), SAM masks 0 and 1
    # kept; seen class 0 has no SAM term
    p = mask_cls.softmax(-1)[:, :-1]
    by_hand_1 = (0.8 * torch.einsum("q,qhw->hw", p[:, 1], mask_logits.sigmoid())
                 + 0.2 * (0.9 * sam_logits[0].sigmoid() + 0.05 * sam_logits[1].sigmoid()))
    torch.testing.assert_close(got[1], by_hand_1, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[0], torch.einsum("q,qhw->hw", p[:, 0], mask_logits.sigmoid()))


def test_merge_keep_rule_and_alpha(hand_made):
    mask_cls, mask_logits, sam_logits, sam_cls, seen = hand_made
    base = sam_semantic_ensemble(mask_cls, mask_logits, sam_logits[:0].clone(), sam_cls[:0], seen,
                                 SamEnsembleOptions(alpha=0.0))  # M = 0: plain semantic inference
    # dropped masks (2: seen, 3: ambiguous) change nothing
    only_kept = sam_semantic_ensemble(mask_cls, mask_logits, sam_logits[:2], sam_cls[:2], seen, OFFICIAL)
    torch.testing.assert_close(sam_semantic_ensemble(mask_cls, mask_logits, sam_logits, sam_cls, seen, OFFICIAL),
                               only_kept)
    assert not torch.allclose(only_kept, base)
    # no mask kept: unseen query scores are still scaled by 1 - alpha (official), seen ones untouched
    none_kept = sam_semantic_ensemble(mask_cls, mask_logits, sam_logits[2:], sam_cls[2:], seen, OFFICIAL)
    torch.testing.assert_close(none_kept, base * torch.tensor([1.0, 0.8, 1.0, 0.8]).view(4, 1, 1))
    # a higher keep threshold drops the 0.8-confident mask 1 but keeps the 0.9 one
    strict = SamEnsembleOptions(keep_threshold=0.85)
    only_first = sam_semantic_ensemble(mask_cls, mask_logits, sam_logits[:1], sam_cls[:1], seen, OFFICIAL)
    torch.testing.assert_close(sam_semantic_ensemble(mask_cls, mask_logits, sam_logits, sam_cls, seen, strict),
                               only_first)


def test_merge_without_sam_masks_is_semantic_inference(hand_made):
    mask_cls, mask_logits, sam_logits, sam_cls, seen = hand_made
    got = sam_semantic_ensemble(mask_cls, mask_logits, sam_logits[:0], sam_cls[:0], seen, OFFICIAL)
    torch.testing.assert_close(got, official_geo_with_sam_inference(mask_cls, mask_logits, None, None, seen))


def test_pooling_pad_quirk_pools_only_top_left_cells():
    """A SAM mask covering the whole image: with the official padding to 32, only CLIP cells (0, 0)
    and (0, 1) of a 5×7 grid are pooled (the mask is squeezed to the top-left); without it, all 35."""
    full = torch.full((1, 150, 220), 5.0)
    padded = sam_masks_for_pooling(full, (5, 7), OFFICIAL)
    assert padded.shape == (1, 5, 7)
    assert (padded > 0).nonzero().tolist() == [[0, 0, 0], [0, 0, 1]]
    plain = sam_masks_for_pooling(full, (5, 7), SamEnsembleOptions(pooling_pad=None))
    assert bool((plain > 0).all())


def test_pooling_matches_official_imagelist_and_maskpooling():
    """Official: nearest to the CLIP grid, ``ImageList.from_tensors`` (zero pad to /32), then
    ``MaskPooling`` resizes bilinearly back; a 40×70 grid pads to 64×96."""
    sam = torch.stack([_disk(300, 520, 100, 200, 90), _disk(300, 520, 250, 60, 40)])
    near = F.interpolate(sam[None], size=(40, 70), mode="nearest")[0]
    official = torch.zeros(2, 64, 96)
    official[:, :40, :70] = near
    official = F.interpolate(official[None], size=(40, 70), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(sam_masks_for_pooling(sam, (40, 70), OFFICIAL), official, rtol=0, atol=0)


def test_resize_sam_logits():
    sam = torch.randn(3, 20, 30)
    assert resize_sam_logits(sam, (20, 30)) is sam
    assert resize_sam_logits(sam, (40, 60)).shape == (3, 40, 60)


def test_options_validation():
    with pytest.raises(ValueError):
        SamEnsembleOptions(alpha=1.5)
    with pytest.raises(ValueError):
        SamEnsembleOptions(pooling_pad=0)


def test_classify_through_mask_classifier_graph_equals_official_pooling(tiny_model, tiny_text):
    """The graph path (8× nearest up to stride 4, chunks of Q) gives the official pooled logits:
    ``classify_masks`` on the zero-padded masks, which it resizes to res5 bilinearly (MaskPooling)."""
    from cmpf.runtime.torch_runner import TorchRunner

    g = torch.Generator().manual_seed(1)
    res5 = torch.randn(1, tiny_model.backbone.channels["res5"], 3, 5, generator=g)
    m = tiny_model.cfg.num_queries + 3  # two chunks, the last one padded
    sam = torch.stack([_disk(90, 150, int(torch.randint(0, 90, (1,), generator=g)),
                             int(torch.randint(0, 150, (1,), generator=g)), 30) for _ in range(m)])
    classifier = mask_classifier_runner(TorchRunner(tiny_model, "mask_classifier"), res5, tiny_text.embeddings,
                                        tiny_text.synonym_mask, tiny_model.cfg.num_queries)
    got = classify_sam_masks(sam, (3, 5), classifier, OFFICIAL)
    near = F.interpolate(sam[None], size=(3, 5), mode="nearest")
    padded = F.pad(near, (0, 32 - 5, 0, 32 - 3))
    ref = tiny_model.classify_masks(res5, padded, tiny_text)[0]
    assert got.shape == (m, tiny_text.num_classes + 1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
