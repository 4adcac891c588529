"""``tiny-fusioner`` model: config, shapes, state-dict layout, graph wrappers vs the model's methods."""

from __future__ import annotations

import pytest
import torch

from cmpf.fusioner import PRESETS, get_config
from cmpf.fusioner.graphs import GRAPH_NAMES, WRAPPERS, graph_specs
from cmpf.fusioner.prompts import TEMPLATES, tokenize_class
from cmpf.spec import GraphSpec, TensorSpec


def test_presets_and_validation():
    assert set(PRESETS) == {"fusioner-vitl14", "tiny-fusioner"}
    big = get_config("fusioner-vitl14")
    assert (big.clip_model, big.fusion_width, big.fusion_layers, big.fusion_heads) == ("ViT-L-14-quickgelu", 512, 12, 8)
    assert (big.window_size, big.grid_size, big.num_patches, big.temperature) == (224, 16, 256, 0.07)
    with pytest.raises(ValueError, match="unknown Fusioner preset"):
        get_config("fusioner-b16")
    with pytest.raises(ValueError, match="divisible"):
        get_config("tiny-fusioner", fusion_heads=3)
    with pytest.raises(ValueError, match="multiple"):
        get_config("tiny-fusioner", window_size=225)
    assert len(TEMPLATES) == 32 and sum(t.endswith(".") for t in TEMPLATES) == 4


def test_state_dict_groups(tiny_fusioner):
    keys = list(tiny_fusioner.state_dict())
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"text_model", "img_model", "fusion", "decoder"}
    for key in ("text_model.logit_scale", "text_model.token_embedding.weight", "img_model.class_embedding",
                "img_model.proj", "fusion.cls_emb", "fusion.proj_patch", "fusion.visual_proj.2.weight",
                "fusion.text_proj.1.bias", "fusion.blocks.1.attn.qkv.weight", "decoder.conv_4.bias"):
        assert key in keys
    assert not any("attn_mask" in k or "norm_0" in k for k in keys)  # non-persistent / parameter-free
    assert all(not p.requires_grad for n, p in tiny_fusioner.named_parameters() if n.startswith(("text_", "img_")))
    assert all(p.requires_grad for n, p in tiny_fusioner.named_parameters() if n.startswith(("fusion", "decoder")))


def test_shapes(tiny_fusioner):
    model, d = tiny_fusioner, tiny_fusioner.cfg.clip_embed_dim
    with torch.no_grad():
        tokens = model.encode_image(torch.randn(2, 3, 224, 224))
        assert tokens.shape == (2, 256, d)
        torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(2, 256))
        text = model.encode_class(tokenize_class("cat"))
        assert text.shape == (1, d)
        text3 = torch.cat([text, model.encode_class(tokenize_class("dog")), text])
        patches, classes = model.fuse(tokens, text3)
        assert patches.shape == (2, 256, 16) and classes.shape == (2, 3, 16)
        logits = model.segment_window(tokens, text3)
        assert logits.shape == (2, 3, 224, 224) and logits.dtype == torch.float32
        assert logits.abs().max() <= 1 / 0.07 + 1e-4
        torch.testing.assert_close(logits[:, 0], logits[:, 2])  # same class vector, same logits
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        model.encode_image(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match="K >= 1"):
        model.segment_window(tokens, text3[:0])


def _dummy(spec: TensorSpec, sizes: dict[str, int]) -> torch.Tensor:
    dims = tuple(sizes[d] if isinstance(d, str) else d for d in spec.dims)
    if spec.dtype == "int64":
        return tokenize_class("cat")
    return torch.randn(dims, dtype=spec.torch_dtype)


def test_specs(tiny_fusioner):
    specs = graph_specs(tiny_fusioner.cfg)
    assert tuple(specs) == GRAPH_NAMES == tuple(WRAPPERS)
    assert all(isinstance(s, GraphSpec) for s in specs.values())
    big = graph_specs(get_config("fusioner-vitl14"))
    assert big["fusioner_visual_encoder"].inputs[0].dims == ("batch", 3, 224, 224)
    assert big["fusioner_visual_encoder"].outputs[0].dims == ("batch", 256, 768)
    assert big["fusioner_text_encoder"].inputs[0] == TensorSpec("template_token_ids", (32, 77), "int64")
    assert big["fusioner_text_encoder"].outputs[0].dims == (1, 768)
    assert big["fusioner_fusion_decoder"].input_names == ["image_tokens", "text_embeddings"]
    assert big["fusioner_fusion_decoder"].outputs[0].dims == ("batch", "num_classes", 224, 224)
    assert GraphSpec.from_json(big["fusioner_fusion_decoder"].to_json()) == big["fusioner_fusion_decoder"]


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_wrappers_equal_the_model_methods(tiny_fusioner, name):
    model = tiny_fusioner
    spec = graph_specs(model.cfg)[name]
    sizes = {"batch": 2, "num_classes": 3}
    inputs = [_dummy(t, sizes) for t in spec.inputs]
    if name == "fusioner_fusion_decoder":
        inputs = [torch.nn.functional.normalize(x, dim=-1) for x in inputs]
    method = {"fusioner_visual_encoder": model.encode_image, "fusioner_text_encoder": model.encode_class,
              "fusioner_fusion_decoder": model.segment_window}[name]
    with torch.no_grad():
        out = WRAPPERS[name](model)(*inputs)
        expected = method(*inputs)
    assert torch.equal(out, expected)
    (out_spec,) = spec.outputs
    assert out.dtype == out_spec.torch_dtype
    assert out.shape == tuple(sizes[d] if isinstance(d, str) else d for d in out_spec.dims)


def test_forward_is_the_three_graphs_chained(tiny_fusioner):
    model = tiny_fusioner
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        text = torch.cat([WRAPPERS["fusioner_text_encoder"](model)(tokenize_class(n)) for n in ("cat", "sky")])
        tokens = WRAPPERS["fusioner_visual_encoder"](model)(pixels)
        chained = WRAPPERS["fusioner_fusion_decoder"](model)(tokens, text)
        assert torch.equal(chained, model(pixels, text))
