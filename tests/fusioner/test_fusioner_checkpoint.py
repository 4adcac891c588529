"""Strict loading of the official layout, CLIP weights given separately, the per-group report, errors."""

from __future__ import annotations

import pytest
import torch

from cmpf.fusioner import CheckpointError, build_model, load_checkpoint
from cmpf.fusioner.checkpoint import clip_to_fusioner_keys, read_state_dict


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    return build_model("tiny-fusioner")


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(2)
    return build_model("tiny-fusioner")


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _assert_equal_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_layout_round_trip(tmp_path, source):
    path = _save(tmp_path, "fusioner.pth", {"model": source.state_dict()})
    model = build_model("tiny-fusioner", checkpoint=path)
    _assert_equal_weights(model, source)
    report = model.load_report
    assert report.ok and list(report.groups) == ["clip_text", "clip_image", "fusion", "decoder"]
    assert all(g.loaded == g.expected and g.sources == (str(path),) for g in report.groups.values())
    assert len(report.summary().splitlines()) == 4 and "missing 0" in report.summary()


def test_clip_weights_given_separately(tmp_path, source, target):
    """OpenAI / open_clip layout for the towers (visual.X, X) + a trainable-only checkpoint."""
    own = source.state_dict()
    clip = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77)}  # OpenAI extras
    clip.update({"visual." + k[len("img_model."):]: v for k, v in own.items() if k.startswith("img_model.")})
    clip.update({k[len("text_model."):]: v for k, v in own.items() if k.startswith("text_model.")})
    trained = {k: v for k, v in own.items() if k.startswith(("fusion.", "decoder."))}
    clip_path = _save(tmp_path, "ViT-tiny.pt", clip)
    ckpt_path = _save(tmp_path, "trained.pth", {"model": trained})
    report = load_checkpoint(target, ckpt_path, clip_weights=clip_path)
    _assert_equal_weights(target, source)
    assert report.groups["clip_image"].sources == (str(clip_path),)
    assert report.groups["fusion"].sources == (str(ckpt_path),)
    assert set(clip_to_fusioner_keys(clip)) == {k for k in own if k.startswith(("img_model.", "text_model."))}


def _error(tmp_path, state, **kwargs) -> CheckpointError:
    path = _save(tmp_path, "bad.pth", {"model": state})
    with pytest.raises(CheckpointError) as err:
        build_model("tiny-fusioner", checkpoint=path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return err.value


def test_missing_clip_group_names_the_fix(tmp_path, source):
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("img_model.")}
    err = _error(tmp_path, state)
    assert "clip_image is absent" in str(err) and "clip_weights" in str(err)
    assert err.report.groups["clip_image"].loaded == 0 and err.report.groups["fusion"].missing == ()


def test_incomplete_group(tmp_path, source):
    state = dict(source.state_dict())
    del state["fusion.cls_emb"]
    err = _error(tmp_path, state)
    assert "fusion is incomplete" in str(err) and "fusion.cls_emb" in str(err)
    assert err.report.groups["fusion"].missing == ("fusion.cls_emb",)


def test_unexpected_and_wrong_shape(tmp_path, source):
    state = dict(source.state_dict())
    state["fusion.extra.weight"] = torch.zeros(3)
    err = _error(tmp_path, state)
    assert "unexpected fusion keys" in str(err) and err.report.groups["fusion"].unexpected == ("fusion.extra.weight",)
    state = dict(source.state_dict())
    state["decoder.conv_0.weight"] = torch.zeros(8, 8, 3, 3)
    err = _error(tmp_path, state)
    assert "do not fit" in str(err) and "another preset" in str(err)
    assert "decoder.conv_0.weight" in err.report.groups["decoder"].wrong_shape[0]


def test_a_vitl_checkpoint_does_not_fit_the_tiny_model(tmp_path, source):
    state = dict(source.state_dict())
    state["fusion.proj_patch"] = torch.zeros(512, 512)
    assert "fusion.proj_patch" in str(_error(tmp_path, state))


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file") as err:
        read_state_dict(tmp_path / "junk.pth")
    assert "\n" not in str(err.value)

    import argparse  # a pickled object of an arbitrary class: refused by weights_only=True

    torch.save({"model": argparse.Namespace(lr=1)}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="pickled Python objects") as err:
        read_state_dict(tmp_path / "code.pth")
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    torch.save({"model": {"a": 1}}, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        read_state_dict(tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="no weight file"):
        load_checkpoint(torch.nn.Linear(1, 1))


def test_module_prefix_and_bare_state_dict(tmp_path, source, target):
    bare = {"module." + k: v for k, v in source.state_dict().items()}
    load_checkpoint(target, _save(tmp_path, "bare.pth", bare))
    _assert_equal_weights(target, source)


def test_safetensors_and_torchscript_clip_files(tmp_path, source):
    """open_clip ships .safetensors; OpenAI's ViT-L-14.pt is a TorchScript archive (tensors read only)."""
    from safetensors.torch import save_file

    linear = torch.nn.Linear(3, 2)
    save_file(dict(linear.state_dict()), str(tmp_path / "clip.safetensors"))
    torch.jit.save(torch.jit.script(linear), str(tmp_path / "clip_jit.pt"))
    for name in ("clip.safetensors", "clip_jit.pt"):
        state = read_state_dict(tmp_path / name)
        assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], linear.weight), name
