"""What a newcomer meets first: `cmpf --help`, `--version`, help texts, `cmpf run` → `cmpf metrics`, the overlay."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import exported
from cmpf.cli import ALIASES, COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a.help for a in action._choices_actions}


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("cmpf 0.")


def test_help_lists_every_command_with_the_summary_its_module_registers():
    listing = _summaries(build_parser(["--help"]))  # the table, without importing any command
    assert list(listing) == list(COMMANDS)
    assert _summaries(build_parser()) == listing  # every module's own help text (all parsers built)


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS), ["metrics", "panoptic", "--help"],
                                  ["check-env", "--help"]], ids=lambda argv: " ".join(argv))
def test_help_imports_neither_torch_nor_other_commands(argv):
    """`cmpf --help` and `cmpf CMD --help` load only what they print (their speed, in a process of its own)."""
    code = ("import json, sys\nfrom cmpf.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'PIL', 'onnxruntime', 'scipy') if m in sys.modules)\n"
            "commands = sorted(m for m in sys.modules if m.startswith('cmpf.cli.') and m != 'cmpf.cli.common')\n"
            "print(json.dumps([heavy, commands]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    heavy, commands = json.loads(r.stdout.strip().splitlines()[-1])
    assert heavy == [], f"{argv} imported {heavy}"
    named = None if argv[0] == "--help" else ALIASES.get(argv[0], argv[0])
    assert commands == ([] if named is None else [f"cmpf.cli.{COMMANDS[named][0]}"])


@pytest.mark.parametrize("command", ["run", "demo", "metrics"])
def test_every_option_has_help_with_its_default_and_no_markup(command):
    parser = _subparsers(build_parser([command, "--help"]))[command]
    parsers = [parser] + list(_subparsers(parser).values()) if command == "metrics" else [parser]
    for p in parsers:
        text = p.format_help()
        assert "``" not in text and ":class:" not in text and ":func:" not in text, p.prog
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{p.prog} {action.option_strings or action.dest} has no help"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, f"{p.prog} {action.option_strings} does not say its default"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from cmpf.data.synthetic import make_synthetic_coco_panoptic

    return make_synthetic_coco_panoptic(tmp_path_factory.mktemp("scenes"), 3, (48, 64), seed=3, split="val2017",
                                        image_format="png", num_crowd_only=0)


def test_run_output_is_what_metrics_reads(scenes, tmp_path, capsys):
    """`cmpf run DIR --coco-json` → `cmpf metrics panoptic | semantic | instance` on its files."""
    pytest.importorskip("onnxruntime")
    artifacts = exported.tiny_export(("onnx",))
    out = tmp_path / "out"
    assert main(["run", str(scenes.image_dir), "--artifacts", str(artifacts), "--coco-json", str(scenes.json_path),
                 "--no-resize", "--out", str(out), "--no-progress"]) == 0
    assert "segmented 3 images" in capsys.readouterr().out
    gt = json.loads(scenes.json_path.read_text())
    coco = json.loads((out / "panoptic.json").read_text())
    assert [im["id"] for im in coco["images"]] == [im["id"] for im in gt["images"]]  # the dataset's numeric ids
    assert coco["categories"][1] == {**{k: gt["categories"][1][k] for k in ("id", "name", "isthing")},
                                     "color": coco["categories"][1]["color"]}  # the dataset's category ids
    dataset_ids = {c["id"] for c in gt["categories"]}
    assert all(s["category_id"] in dataset_ids for a in coco["annotations"] for s in a["segments_info"])
    results = json.loads((out / "instances.json").read_text())
    assert all({"image_id", "category_id", "segmentation", "bbox", "area", "score"} <= set(r) for r in results)
    reports = {}
    for task, args in {
        "panoptic": ["--gt-json", scenes.json_path, "--gt-dir", scenes.panoptic_dir,
                     "--pred-json", out / "panoptic.json", "--pred-dir", out / "panoptic"],
        "semantic": ["--gt-dir", scenes.semantic_dir, "--pred-dir", out / "semantic", "--num-classes", 7],
        "instance": ["--gt-json", scenes.instances_json, "--pred-json", out / "instances.json"],
    }.items():
        report = tmp_path / f"{task}.json"
        assert main(["metrics", task, *map(str, args), "--no-progress", "--out", str(report)]) == 0, task
        reports[task] = json.loads(report.read_text())
    assert reports["panoptic"]["All"]["n"] > 0 and "mIoU" in reports["semantic"] and "AP" in reports["instance"]


def test_overlay_names_and_colours_every_segment():
    from cmpf.visualize import LEGEND_WIDTH, MIN_OVERLAY_SIDE, overlay, palette

    colours = palette(30)
    assert len({tuple(c) for c in colours.tolist()}) == 30 and np.array_equal(colours, palette(30))
    image = torch.full((3, 64, 96), 100, dtype=torch.uint8)
    masks = torch.zeros(3, 64, 96, dtype=torch.bool)
    masks[0, :32] = True  # a stuff band, and two instances of one thing class
    masks[1, 40:60, 10:40] = True
    masks[2, 40:60, 60:90] = True
    picture = overlay(image, masks, [0, 1, 1], ["sky", "box"], colours)
    scale = -(-MIN_OVERLAY_SIDE // 64)
    assert picture.shape == (64 * scale, 96 * scale + LEGEND_WIDTH, 3)
    inside = lambda y, x: tuple(picture[y * scale + scale // 2, x * scale + scale // 2])  # noqa: E731
    first, second = inside(50, 25), inside(50, 75)
    assert first != second  # two instances of one class: two shades
    assert inside(20, 50) != inside(50, 25) and inside(62, 50) == (100, 100, 100)  # tinted vs untouched pixels
    legend = picture[:, 96 * scale:]
    assert (legend == colours[0]).all(-1).sum() > 50 and (legend == colours[1]).all(-1).sum() > 50  # swatches
    empty = overlay(image, masks[:0], [], ["sky"], colours)
    assert (empty[:, :96 * scale] == 100).all()
