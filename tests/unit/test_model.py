import sys, pathlib
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "parity"))
import pytest
import torch

from cmpf.config import PRESETS, default_options, get_config
from cmpf.kernels.ms_deform_attn import fold_levels_like_official_kernel, ms_deform_attn_ref
from cmpf.model import build_model
from cmpf.preprocess import prepare_inputs


def _inputs(h=96, w=128, b=1):
    return prepare_inputs([torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for _ in range(b)], sam_size=256)


def test_presets_are_valid_and_distinct():
    assert {"frozenseg-convnext-large", "frozenseg-rn50x64", "fcclip-convnext-large", "fcclip-rn50x64",
            "tiny"} <= set(PRESETS)
    assert PRESETS["frozenseg-rn50x64"].clip_quick_gelu and default_options("frozenseg-rn50x64").ensemble_on_valid_mask
    assert PRESETS["fcclip-convnext-large"].sam is None
    with pytest.raises(ValueError, match="unknown model preset"):
        get_config("nope")
    with pytest.raises(ValueError, match="divisible"):
        get_config("tiny", num_heads=7)


def test_component_shapes(tiny_model, tiny_text):
    m, inp = tiny_model, _inputs(96, 160, b=2)
    feats = m.encode_clip(inp.clip_pixels)
    for i, (name, c) in enumerate(m.backbone.channels.items()):
        assert feats[name].shape == (2, c, 96 // 2 ** (i + 2), 160 // 2 ** (i + 2))
    sam = m.encode_sam(inp.sam_pixels)
    assert sam.shape == (2, m.cfg.hidden_dim, 16, 16)
    with torch.no_grad():
        mf, ms, sam_fpn = m.sem_seg_head.pixel_decoder(feats, sam)
    assert mf.shape == (2, m.cfg.hidden_dim, 24, 40)
    assert [x.shape[-2:] for x in ms] == [(3, 5), (6, 10), (12, 20)]
    assert sam_fpn.shape == (2, m.cfg.hidden_dim, 8, 8)
    out = m(inp.clip_pixels, inp.sam_pixels, tiny_text, torch.tensor([1.0, 0, 1, 0]))
    q, k = m.cfg.num_queries, tiny_text.num_classes
    assert out.pred_logits.shape == (2, q, k + 1) and out.out_vocab_logits.shape == (2, q, k + 1)
    assert out.pred_masks.shape == (2, q, 24, 40) and len(out.aux) == m.cfg.dec_layers
    probs = out.mask_cls_logprob.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(2, q), atol=1e-5)


def test_pixel_decoder_ignores_the_feature_layout(tiny_model):
    """CPU GroupNorm is less accurate on channels-last maps (what the CLIP backbone returns); the pixel
    decoder normalises the layout, so eager results equal those of exported graphs fed NCHW tensors."""
    m, inp = tiny_model, _inputs(256, 320, b=1)
    with torch.no_grad():
        feats = m.encode_clip(inp.clip_pixels)
        sam = m.encode_sam(inp.sam_pixels)
        nhwc = {k: (10 * v + 3).contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
        nchw = {k: v.contiguous() for k, v in nhwc.items()}
        a, b = m.sem_seg_head.pixel_decoder(nhwc, sam), m.sem_seg_head.pixel_decoder(nchw, sam)
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_batch_does_not_change_per_image_results(tiny_model, tiny_text):
    """The SAM-branch quirk is applied per image: results do not depend on the batch."""
    inp2 = _inputs(64, 96, b=2)
    seen = torch.zeros(4)
    both = tiny_model(inp2.clip_pixels, inp2.sam_pixels, tiny_text, seen)
    one = tiny_model(inp2.clip_pixels[1:], inp2.sam_pixels[1:], tiny_text, seen)
    assert torch.allclose(both.mask_cls_logprob[1], one.mask_cls_logprob[0], atol=1e-5)


def test_fold_levels_reads_first_rows_like_the_cuda_kernel():
    loc = torch.arange(2 * 5 * 2 * 3 * 4 * 2, dtype=torch.float32).view(2, 5, 2, 3, 4, 2)
    w = torch.arange(2 * 5 * 2 * 3 * 4, dtype=torch.float32).view(2, 5, 2, 3, 4)
    l2, w2 = fold_levels_like_official_kernel(loc, w)
    assert l2.shape == (2, 5, 2, 1, 4, 2) and w2.shape == (2, 5, 2, 1, 4)
    # row r of image b = row r of that image's (Lq*M*L, P) buffer: query 0 head 1 reads level 1 of head 0
    assert torch.equal(l2[0, 0, 1, 0], loc[0, 0, 0, 1]) and torch.equal(w2[1, 2, 1, 0], w[1, 0, 1, 2])


def test_deformable_reference_matches_bilinear_by_hand():
    value = torch.randn(1, 12, 1, 2)  # one level 3x4
    loc = torch.tensor([[[[[[0.5, 0.5]]]]]])  # align_corners=False: pixel (x, y) = (0.5*4 - 0.5, 0.5*3 - 0.5)
    out = ms_deform_attn_ref(value, [(3, 4)], loc, torch.ones(1, 1, 1, 1, 1))
    v = value.view(3, 4, 2)
    expected = 0.5 * v[1, 1] + 0.5 * v[1, 2]
    assert torch.allclose(out.view(2), expected, atol=1e-6)


@pytest.mark.parametrize("preset", ["tiny-rn", "tiny-fcclip"])
def test_variants_run(preset, tiny_vocab):
    m = build_model(preset)
    text = m.text_classifier_for(tiny_vocab)
    inp = _inputs(64, 64)
    out = m(inp.clip_pixels, inp.sam_pixels if m.sam is not None else None, text, torch.ones(4))
    assert out.mask_cls_logprob.shape == (1, m.cfg.num_queries, 5)
    assert not out.mask_cls_logprob.isnan().any()
    assert (m.sam is None) == (preset == "tiny-fcclip")
    assert ("transformer_cross_attention_layers_sam.0.multihead_attn.in_proj_weight" in
            dict(m.sem_seg_head.predictor.named_parameters())) == (m.sam is not None)


def test_forward_train_and_trainable_parameters(tiny_model, tiny_text):
    model = build_model("tiny").train()
    out = model.forward_train(torch.rand(2, 3, 64, 64) * 255, tiny_text)
    assert out["pred_masks"].shape == (2, model.cfg.num_queries, 16, 16) and len(out["aux_outputs"]) == 9
    names = [n for n, _ in model.trainable_parameters()]
    assert names and all(n.startswith(("sem_seg_head.", "void_embedding.")) for n in names)
    out["pred_logits"].sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.sam.training is False and model.backbone.training is False


def test_official_key_layout_matches_reference():
    import golden

    if not golden.available():
        pytest.skip("../shared/reference/golden is not present")
    keys = {line.split("\t")[0] for line in (golden.GOLDEN / "keys_variantB.tsv").read_text().splitlines()[1:]}
    with torch.device("meta"):
        model = build_model("frozenseg-convnext-large")
    ours = set(model.state_dict())
    assert ours == keys - {"criterion.empty_weight"}
