"""Post-processing against a plain transcription of the official per-query code (Mask2Former's
``panoptic_inference``), on random scores where many queries overlap, merge and are dropped."""

import pytest
import torch

from cmpf.postprocess import instance_inference, masks_to_image, panoptic_inference, postprocess


def official_panoptic(mask_cls, masks, is_thing, object_mask_threshold, overlap_threshold):
    scores, labels = mask_cls.softmax(-1).max(-1)
    keep = labels.ne(mask_cls.shape[-1] - 1) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep].sigmoid()
    panoptic = torch.zeros(masks.shape[-2:], dtype=torch.int32)
    segments, stuff, current = [], {}, 0
    if cur_masks.shape[0] == 0:
        return panoptic, segments
    mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    for k in range(cur_classes.shape[0]):
        pred_class = cur_classes[k].item()
        isthing = bool(is_thing[pred_class])
        mask_area = (mask_ids == k).sum().item()
        original_area = (cur_masks[k] >= 0.5).sum().item()
        mask = (mask_ids == k) & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and mask.sum().item() > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing:
                if int(pred_class) in stuff:
                    panoptic[mask] = stuff[int(pred_class)]
                    continue
                stuff[int(pred_class)] = current + 1
            current += 1
            panoptic[mask] = current
            segments.append({"id": current, "isthing": isthing, "category_id": int(pred_class),
                             "area": None})
    for seg in segments:
        seg["area"] = int((panoptic == seg["id"]).sum())
    return panoptic, segments


@pytest.mark.parametrize("seed,object_threshold,overlap", [(0, 0.0, 0.8), (1, 0.0, 0.3), (2, 0.5, 0.8),
                                                            (3, 0.99, 0.8), (4, 0.0, 0.0)])
def test_panoptic_matches_the_official_loop(seed, object_threshold, overlap):
    g = torch.Generator().manual_seed(seed)
    q, k = 60, 7  # few classes: stuff segments of one class merge
    mask_cls = torch.randn(q, k + 1, generator=g) * 3
    # each query covers one or two of 12 cells: queries win, share or lose cells, as trained ones do
    cells = torch.zeros(q, 12)
    cells[torch.arange(q), torch.arange(q) % 12] = 8
    cells[torch.arange(q), torch.randint(0, 12, (q,), generator=g)] += 8 * (torch.rand(q, generator=g) > 0.5)
    grid = cells.view(q, 3, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)
    masks = grid - 4 + torch.randn(q, 24, 32, generator=g)
    is_thing = torch.rand(k, generator=g) > 0.5
    got_ids, got_segments = panoptic_inference(mask_cls, masks, is_thing, object_threshold, overlap)
    ref_ids, ref_segments = official_panoptic(mask_cls, masks, is_thing, object_threshold, overlap)
    assert torch.equal(got_ids, ref_ids)
    assert got_segments == ref_segments
    if object_threshold < 0.99:
        assert got_segments, "the case should make segments"


def test_postprocess_outputs_are_at_the_output_size():
    g = torch.Generator().manual_seed(5)
    mask_cls, logits = torch.randn(20, 6, generator=g), torch.randn(20, 16, 24, generator=g)
    seg = postprocess(mask_cls, logits, padded_size=(64, 96), image_size=(60, 90), output_size=(30, 45),
                      is_thing=torch.tensor([True, False, True, False, True]), object_mask_threshold=0.0,
                      overlap_threshold=0.8, topk=10, class_names=list("abcde"))
    assert seg.semantic.shape == (5, 30, 45) and seg.panoptic.shape == (30, 45)
    assert seg.instance_masks.shape[1:] == (30, 45) and len(seg.instance_scores) <= 10
    full = masks_to_image(logits, (64, 96), (60, 90), (60, 90))
    assert torch.equal(full, torch.nn.functional.interpolate(logits[None], size=(64, 96), mode="bilinear",
                                                             align_corners=False)[0, :, :60, :90])


def official_instances(mask_cls, masks, is_thing, topk):
    scores = mask_cls.softmax(-1)[:, :-1]
    num_classes = scores.shape[1]
    labels = torch.arange(num_classes).unsqueeze(0).repeat(scores.shape[0], 1).flatten(0, 1)
    top_scores, top_idx = scores.flatten(0, 1).topk(topk, sorted=False)
    top_labels, top_query = labels[top_idx], top_idx // num_classes
    keep = is_thing[top_labels]
    top_scores, top_labels, top_query = top_scores[keep], top_labels[keep], top_query[keep]
    pred = masks[top_query]
    binary = (pred > 0).float()
    mask_scores = (pred.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return top_scores * mask_scores, top_labels, pred > 0


def test_instances_match_the_official_code():
    g = torch.Generator().manual_seed(6)
    mask_cls, masks = torch.randn(40, 9, generator=g) * 2, torch.randn(40, 20, 28, generator=g) * 3
    is_thing = torch.tensor([True, False] * 4)
    got = instance_inference(mask_cls, masks, is_thing, topk=50, probs=masks.sigmoid())
    ref = official_instances(mask_cls, masks, is_thing, topk=50)
    assert len(got[0]) > 10 and len(torch.unique(ref[2].flatten(1), dim=0)) < len(ref[2])  # shared queries
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=0)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])
