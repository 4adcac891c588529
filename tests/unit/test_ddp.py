"""Two-process gloo ``torchrun`` of the tiny preset: replicas stay identical, the mask count is averaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from cmpf.data import make_synthetic_coco_panoptic
from cmpf.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os
    import torch
    import torch.distributed as dist
    from cmpf.train.criterion import average_num_masks
    from cmpf.train.loop import TrainConfig, train

    out = {out!r}
    cfg = TrainConfig(preset="tiny", data_root={data!r}, out_dir=out, max_iter=4, batch_size=4, image_size=64,
                      num_workers=1, checkpoint_period=2, log_period=2, num_points=256, device="cpu")
    result = train(cfg)  # the tiny preset
    rank = dist.get_rank()
    targets = [{{"labels": torch.zeros(3 if rank == 0 else 1)}}]
    torch.save({{"state": {{k: v for k, v in result.model.state_dict().items()}},
                "num_masks": average_num_masks(targets, torch.device("cpu")),
                "world_size": dist.get_world_size()}}, os.path.join(out, f"rank{{rank}}.pt"))
    dist.destroy_process_group()
    """
)


def test_two_process_gloo_replicas_stay_identical(tmp_path):
    data = tmp_path / "data"
    make_synthetic_coco_panoptic(data, 9, 80, seed=2)
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(out=str(out), data=str(data)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["num_masks"] == ranks[1]["num_masks"] == 2.0  # (3 + 1) / 2
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    saved = ckpt.load_checkpoint(out / "checkpoint_0000004.pth")
    assert len(saved["rng"]) == 2 and saved["config"]["batch_size"] == 4
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])  # ranks sample differently
    for key, value in saved["model"].items():
        assert torch.equal(value, ranks[0]["state"][key]), key
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [2, 4]
