"""Point sampling, Hungarian matcher and set criterion on small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmpf.train.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from cmpf.train.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost
from cmpf.train.point_sampling import point_sample, uncertain_point_coords

LOG2 = math.log(2.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_point_sample_reads_pixel_centres():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    ys, xs = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    coords = torch.stack([(xs + 0.5) / 4, (ys + 0.5) / 3], dim=-1).reshape(1, 12, 2)
    torch.testing.assert_close(point_sample(x, coords), x.reshape(1, 1, 12))
    # the same normalised point on a 2x-upsampled (nearest) map reads the same value
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    torch.testing.assert_close(point_sample(up, coords), x.reshape(1, 1, 12))


def test_importance_sampling_picks_uncertain_points():
    logits = torch.full((2, 1, 16, 16), 10.0)
    logits[:, :, :, :8] = 0.0  # the left half is maximally uncertain (|logit| = 0)
    coords = uncertain_point_coords(logits, num_points=40, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert coords.shape == (2, 40, 2) and ((coords >= 0) & (coords <= 1)).all()
    assert (coords[:, :30, 0] < 0.5).all(), "the 30 importance points lie in the uncertain half"
    coords = uncertain_point_coords(logits, num_points=10, oversample_ratio=1.0, importance_sample_ratio=0.0)
    assert coords.shape == (2, 10, 2)
    with pytest.raises(ValueError):
        uncertain_point_coords(logits, 10, 0.5, 0.75)


def test_batch_costs_match_loops():
    inputs, targets = torch.randn(4, 30), (torch.rand(3, 30) > 0.5).float()
    ce, dice = batch_sigmoid_ce_cost(inputs, targets), batch_dice_cost(inputs, targets)
    for n in range(4):
        for m in range(3):
            bce = F.binary_cross_entropy_with_logits(inputs[n], targets[m])
            torch.testing.assert_close(ce[n, m], bce)
            p = inputs[n].sigmoid()
            expected = 1 - (2 * (p * targets[m]).sum() + 1) / (p.sum() + targets[m].sum() + 1)
            torch.testing.assert_close(dice[n, m], expected)


def test_losses_hand_computed():
    logits = torch.zeros(2, 8)  # sigmoid 0.5 and BCE log 2 whatever the target
    labels = torch.tensor([[1.0] * 8, [1.0] * 4 + [0.0] * 4])
    torch.testing.assert_close(sigmoid_ce_loss(logits, labels, num_masks=2.0), torch.tensor(LOG2))
    # dice: 1 - (2*0.5*|t| + 1) / (0.5*8 + |t| + 1); |t| = 8 and 4
    expected = ((1 - 9 / 13) + (1 - 5 / 9)) / 4.0
    torch.testing.assert_close(dice_loss(logits, labels, num_masks=4.0), torch.tensor(expected))


def _perfect_outputs(targets, num_queries, num_classes, order):
    """Predictions where query order[m] reproduces target m exactly (masks at 1/4 resolution)."""
    b = len(targets)
    h, w = targets[0]["masks"].shape[-2:]
    logits = torch.full((b, num_queries, num_classes + 1), -5.0)
    logits[..., -1] = 5.0
    masks = torch.full((b, num_queries, h // 4, w // 4), -20.0)
    for i, t in enumerate(targets):
        small = F.interpolate(t["masks"][None].float(), size=(h // 4, w // 4), mode="nearest")[0]
        for m, q in enumerate(order):
            logits[i, q, t["labels"][m]] = 10.0
            masks[i, q] = small[m] * 40 - 20
    return {"pred_logits": logits, "pred_masks": masks}


def _blocks(h=32, w=32):
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, :16, :16] = masks[1, :16, 16:] = masks[2, 16:] = True
    return {"labels": torch.tensor([2, 0, 1]), "masks": masks}


def test_matcher_recovers_permutation():
    targets = [_blocks(), _blocks()]
    outputs = _perfect_outputs(targets, num_queries=6, num_classes=3, order=[4, 1, 3])
    matcher = HungarianMatcher(num_points=500)
    for rows, cols in matcher(outputs, targets):
        assert dict(zip(rows.tolist(), cols.tolist())) == {4: 0, 1: 1, 3: 2}
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}]
    rows, cols = matcher({k: v[:1] for k, v in outputs.items()}, empty)[0]
    assert rows.numel() == 0 and cols.numel() == 0


def test_matcher_cost_formula():
    targets = _blocks()
    logits, masks = torch.randn(5, 4), torch.randn(5, 8, 8)
    matcher = HungarianMatcher(num_points=64)
    cost = matcher.cost_matrix(logits, masks, targets["labels"], targets["masks"], torch.Generator().manual_seed(1))
    coords = torch.rand(1, 64, 2, generator=torch.Generator().manual_seed(1))
    out = point_sample(masks[:, None], coords.expand(5, -1, -1))[:, 0]
    tgt = point_sample(targets["masks"][:, None].float(), coords.expand(3, -1, -1))[:, 0]
    expected = (
        2 * -logits.softmax(-1)[:, targets["labels"]]
        + 5 * batch_sigmoid_ce_cost(out, tgt)
        + 5 * batch_dice_cost(out, tgt)
    )
    torch.testing.assert_close(cost, expected)
    assert cost.dtype == torch.float32
    cost16 = matcher.cost_matrix(logits.half(), masks.half(), targets["labels"], targets["masks"])
    assert cost16.dtype == torch.float32


def test_classification_loss_hand_computed():
    criterion = SetCriterion(2, HungarianMatcher(num_points=16), num_points=16, num_aux=0)
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]]])  # (B=1, Q=2, K+1=3)
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 8, 8, dtype=torch.bool)}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    nll0 = -logits[0, 0].log_softmax(-1)[1]  # query 0 -> class 1 (weight 1)
    nll1 = -logits[0, 1].log_softmax(-1)[2]  # query 1 -> void (weight 0.1)
    expected = (1.0 * nll0 + 0.1 * nll1) / 1.1
    torch.testing.assert_close(criterion.loss_labels(logits, targets, indices), expected)


def test_mask_losses_normalised_by_number_of_masks():
    criterion = SetCriterion(3, HungarianMatcher(num_points=100), num_points=100, num_aux=0)
    t1 = _blocks()
    t2 = {"labels": torch.tensor([0]), "masks": t1["masks"][:1]}
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_masks": torch.zeros(2, 5, 8, 8, requires_grad=True)}
    losses = criterion(outputs, [t1, t2])  # 4 target masks, each with BCE log 2 at logit 0
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(LOG2))
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}
    losses = criterion(outputs, [empty, empty])  # num_masks clamps to 1, no matched mask
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    losses["loss_mask"].backward()  # still connected to the graph
    assert outputs["pred_masks"].grad is not None


def test_deep_supervision_and_weights():
    targets = [_blocks(), _blocks()]
    final = _perfect_outputs(targets, num_queries=6, num_classes=3, order=[0, 1, 2])
    noisy = {k: v + torch.randn_like(v) for k, v in final.items()}
    for v in noisy.values():
        v.requires_grad_(True)
    outputs = {**noisy, "aux_outputs": [dict(noisy) for _ in range(9)]}
    criterion = SetCriterion(3, HungarianMatcher(num_points=200), num_points=200)
    losses = criterion(outputs, targets)
    assert len(losses) == 30 and len(criterion.weight_dict) == 30
    assert {criterion.weight_dict[f"loss_{n}_8"] for n in ("ce", "mask", "dice")} == {2.0, 5.0}
    torch.testing.assert_close(losses["loss_ce_3"], losses["loss_ce"])  # CE does not sample points
    total = criterion.total(losses)
    expected = sum(criterion.weight_dict[k] * v for k, v in losses.items())
    torch.testing.assert_close(total, expected)
    total.backward()
    assert noisy["pred_logits"].grad.abs().sum() > 0 and noisy["pred_masks"].grad.abs().sum() > 0
    torch.testing.assert_close(criterion.empty_weight, torch.tensor([1.0, 1.0, 1.0, 0.1]))


def test_perfect_prediction_has_small_mask_losses():
    targets = [_blocks()]
    outputs = _perfect_outputs(targets, num_queries=4, num_classes=3, order=[0, 1, 2])
    criterion = SetCriterion(3, HungarianMatcher(num_points=300), num_points=300, num_aux=0)
    perfect = criterion(outputs, targets)
    random = criterion({k: torch.randn_like(v) for k, v in outputs.items()}, targets)
    # importance sampling favours boundaries, where sampled labels and logits are blurred: no exact 0
    for name in ("loss_ce", "loss_mask", "loss_dice"):
        assert perfect[name] < 0.5 * random[name], name
