"""Loaders on synthetic official-format files: wrapped / bare / module. prefixes, separate frozen
weights, missing groups, wrong shapes, truncated files, pickles that would run code."""

import pickle

import pytest
import torch

from cmpf.model import CheckpointError, build_model


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    return build_model("tiny")


def _outputs(model, text):
    from cmpf.preprocess import prepare_inputs

    inp = prepare_inputs([torch.arange(3 * 64 * 64).view(3, 64, 64) % 251], sam_size=model.cfg.sam_input_size)
    return model(inp.clip_pixels, inp.sam_pixels, text, torch.ones(text.num_classes)).mask_cls_logprob


def test_official_wrapped_checkpoint_reproduces_outputs(source, tiny_text, tmp_path):
    path = tmp_path / "model_final.pth"
    state = dict(source.state_dict())
    state["criterion.empty_weight"] = torch.ones(5)  # present in official files, ignored
    torch.save({"model": state, "iteration": 10}, path)
    loaded = build_model("tiny", checkpoint=path)
    assert torch.equal(_outputs(loaded, tiny_text), _outputs(source, tiny_text))
    report = loaded.load_report
    assert report.loaded["head"] > 0 and not report.missing and not report.unexpected


def test_bare_dict_with_module_prefix(source, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)
    loaded = build_model("tiny", checkpoint=path)
    assert torch.equal(loaded.void_embedding.weight, source.void_embedding.weight)


def test_frozen_weights_from_separate_files(source, tmp_path):
    state = source.state_dict()
    head = {k: v for k, v in state.items() if not k.startswith(("backbone.", "sam."))}
    clip = {k[len("backbone.clip_model."):]: v for k, v in state.items() if k.startswith("backbone.")}
    sam = {k[len("sam."):]: v for k, v in state.items() if k.startswith("sam.")}
    for name, obj in (("head.pth", {"model": head}), ("clip.bin", clip), ("sam.pth", sam)):
        torch.save(obj, tmp_path / name)
    loaded = build_model("tiny", checkpoint=tmp_path / "head.pth", clip_weights=tmp_path / "clip.bin",
                         sam_weights=tmp_path / "sam.pth")
    assert loaded.load_report.sources["sam"].endswith("sam.pth")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(CheckpointError, match=r"group 'sam' is absent.*--sam-weights"):
        build_model("tiny", checkpoint=tmp_path / "head.pth", clip_weights=tmp_path / "clip.bin")


def test_missing_head_group_is_an_error(source, tmp_path):
    path = tmp_path / "nohead.pth"
    torch.save({"model": {k: v for k, v in source.state_dict().items() if not k.startswith("sem_seg_head.")}}, path)
    with pytest.raises(CheckpointError, match="group 'head' is absent"):
        build_model("tiny", checkpoint=path)


def test_partial_group_is_reported(source, tmp_path):
    state = dict(source.state_dict())
    del state["sem_seg_head.predictor.query_feat.weight"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="'head' is incomplete: 1 of"):
        build_model("tiny", checkpoint=tmp_path / "partial.pth")


def test_checkpoint_of_another_model(tmp_path):
    torch.save({"model": build_model("tiny-rn").state_dict()}, tmp_path / "rn.pth")
    with pytest.raises(CheckpointError, match="do not fit this model"):
        build_model("tiny", checkpoint=tmp_path / "rn.pth")


def test_truncated_and_foreign_files(source, tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": source.state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        build_model("tiny", checkpoint=tmp_path / "trunc.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        build_model("tiny", checkpoint=tmp_path / "missing.pth")
    torch.save({"model": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        build_model("tiny", checkpoint=tmp_path / "list.pth")


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import os; open('PWNED', 'w')",))


def test_a_checkpoint_never_runs_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": _RunsCode()}, f)
    with pytest.raises(CheckpointError):
        build_model("tiny", checkpoint=tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
