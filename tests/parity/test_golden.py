"""Parity with the official FrozenSeg run of ../shared/reference/golden (see its README).

Builds the official-format checkpoint from keys_variantB.tsv (sha256 checked), loads it through
the public loader, runs the full frozenseg-convnext-large model on input_image.png without resizing
and compares every stored tensor. The ADE-150 text encoding (5,642 prompts) is slow on CPU, so the
pipeline is fed the stored text classifier and the text tower is checked on the first 28 prompts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import golden
from cmpf.tolerances import MASK_IOU, REL, SEMANTIC_GAP, mask_iou, rel_error

pytestmark = pytest.mark.skipif(not golden.available(), reason="../shared/reference/golden is not present")

F32, F16 = REL[("golden", "fp32")], REL[("golden", "fp16-stored")]


def golden_segment(runners, cfg):
    """The golden input (no resize, stored text classifier, ADE-150 things, COCO seen mask) through
    ``cmpf.pipeline.segment`` with ``runners``; returns (vocab, seen, arrays, stats, result)."""
    from cmpf.config import InferenceOptions
    from cmpf.pipeline import segment
    from cmpf.text import TextCache, from_synonym_embeddings
    from cmpf.vocabulary import load_vocabulary_file

    arrays, stats = golden.arrays(), golden.stats()
    vocab = load_vocabulary_file(golden.VOCABS / "ade20k_150_with_prompt_eng.txt", things=["ade20k-150"])
    train = load_vocabulary_file(golden.VOCABS / "coco_panoptic_with_prompt_eng.txt")
    options = InferenceOptions(resize=False).with_seen(train.classes)
    seen = options.seen_mask(vocab.classes)
    text = TextCache(runners["text_encoder"])
    text.put(vocab, from_synonym_embeddings(torch.from_numpy(arrays["text_classifier"]), vocab.num_synonyms))
    image = torch.from_numpy(arrays["input_model_image_chw_f32"])
    result = segment([image], vocab, runners, cfg, options, text_cache=text)
    return vocab, seen, arrays, stats, result


def golden_run(tmp_dir, **overrides):
    """Run the golden input through the pipeline with ``frozenseg-convnext-large`` (+ config overrides)."""
    from cmpf.config import get_config
    from cmpf.model import build_model
    from cmpf.runtime.torch_runner import torch_runners

    ckpt = tmp_dir / "frozenseg_variantB.pth"
    torch.save({"model": golden.golden_state_dict()}, ckpt)
    model = build_model(get_config("frozenseg-convnext-large", **overrides), checkpoint=ckpt)
    ckpt.unlink()
    return (model, *golden_segment(torch_runners(model), model.cfg))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return golden_run(tmp_path_factory.mktemp("golden"))


def test_vocabulary_and_seen_mask_match(run):
    _, vocab, seen, _, stats, _ = run
    assert vocab.num_synonyms == stats["num_templates"]
    assert [int(s) for s in seen] == stats["category_overlapping_mask"]
    assert len(vocab.prompts()) == stats["n_prompts"]
    assert vocab.prompts()[:28] == stats["test_class_names_first_28_prompts"]


def test_text_encoder_on_first_prompts(run):
    from cmpf.text import synonym_embeddings, tokenize

    model, vocab, _, arrays, _, _ = run
    tokens = tokenize(vocab.prompts()[:28])
    np.testing.assert_array_equal(tokens.numpy(), arrays["tokens_first_28_prompts"])
    synonyms = synonym_embeddings(model.backbone.encode_text(tokens))  # 2 synonyms × 14 templates
    assert rel_error(synonyms.numpy(), arrays["text_classifier"][:2]) < F32
    assert rel_error(model.void().detach().numpy(), arrays["void_embedding_normalized"]) < F32


def test_decoder_and_ensemble_tensors(run):
    _, _, _, a, _, result = run
    t = {k: v.detach().numpy() for k, v in result.tensors.items()}
    assert rel_error(t["pred_logits"], a["decoder_pred_logits_f32"]) < F32
    masks = t["pred_masks"].reshape(-1)
    assert rel_error(masks[a["decoder_pred_masks_subset_idx"]], a["decoder_pred_masks_subset_val"]) < F32
    assert rel_error(t["pred_masks"], a["decoder_pred_masks_f16"]) < F16
    assert mask_iou(t["pred_masks"] > 0, a["decoder_pred_masks_f16"] > 0) > MASK_IOU
    assert rel_error(t["out_vocab_logits"], a["out_vocab_logits_f32"]) < F32
    assert rel_error(t["mask_cls_logprob"][0], a["final_mask_cls_logprob_f32"]) < F32
    assert rel_error(t["sam_embedding"], a["sam_last_embedding_f16"]) < F16


def test_semantic(run):
    _, _, _, a, _, result = run
    sem = result.segmentations[0].semantic.numpy()  # (150, 300, 400)
    assert rel_error(sem.max(0), a["sem_seg_max_f32"]) < F32
    np.testing.assert_allclose(sem.sum((1, 2)), a["sem_seg_per_class_sum_f64"], rtol=1e-4)
    top2 = np.sort(sem, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > SEMANTIC_GAP
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(sem.argmax(0)[decided], a["sem_seg_argmax_u8"][decided])


def test_panoptic(run):
    """Segments as a set of (class, thing flag), each matched with its reference by mask IoU
    (a boundary pixel whose mask logit is ~0 may flip)."""
    _, _, _, a, stats, result = run
    seg = result.segmentations[0]
    ours = {(s["category_id"], bool(s["isthing"])): seg.panoptic.numpy() == s["id"] for s in seg.segments}
    ref = {(s["category_id"], bool(s["isthing"])): a["panoptic_seg_i32"] == s["id"]
           for s in stats["panoptic_segments_info"]}
    assert ours.keys() == ref.keys()
    for key in ref:
        assert mask_iou(ours[key], ref[key]) > MASK_IOU
    assert mask_iou(seg.panoptic.numpy() > 0, a["panoptic_seg_i32"] > 0) > MASK_IOU


def test_instances_as_a_set(run):
    _, _, _, a, stats, result = run
    seg = result.segmentations[0]
    n = stats["instances_n"]
    assert seg.instance_scores.shape[0] == n
    shape = tuple(a["instances_masks_shape"])
    ref_masks = np.unpackbits(a["instances_masks_packbits"])[: np.prod(shape)].reshape(shape).astype(bool)
    ref = sorted(zip(a["instances_classes_i64"].tolist(), a["instances_scores_f32"].tolist(), range(n)))
    ours = sorted(zip(seg.instance_classes.tolist(), seg.instance_scores.tolist(), range(n)))
    for (rc, rs, ri), (oc, os_, oi) in zip(ref, ours):
        assert rc == oc
        assert abs(rs - os_) <= 1e-4 * max(abs(rs), 1e-3)
        assert mask_iou(seg.instance_masks[oi].numpy(), ref_masks[ri]) > MASK_IOU
