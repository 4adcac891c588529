"""Two exact rewrites of SAM ViT-B's attention, timed against segment-anything's own on this CPU.

    python benchmarks/sam_attention_variants.py --tag epyc-avx2 [--repeats 3] [--hints f32,bf16]

SAM's image encoder is ~75 % of the full model's CPU time and its four global-attention blocks are a
third of that. Each rewrite computes the same numbers as the official module (fp32 rounding aside;
``rel_vs_official`` in the results) and is timed on ONNX Runtime and OpenVINO, from the same ONNX file:

- ``folded`` (a global block's attention): the decomposed relative-position bias goes into the
  Q·Kᵀ product (q gets its ``rel_h`` / ``rel_w`` terms appended, k one-hots of its row and column),
  so the graph is MatMul → Softmax → MatMul with no 4096×4096 bias add, the pattern attention fusions
  look for. It costs 3× the Q·Kᵀ FLOPs.
- ``unpadded`` (a windowed block): qkv is projected on the 64×64 tokens before the window padding
  (the padded tokens get the qkv bias, which is what zeros project to) and ``proj`` after the crop,
  so neither runs on the 4900 − 4096 padded tokens.

Weights are seeded normals (timing does not depend on them); the input is one 1×64×64×768 array (a
ViT-B/16 at 1024²). Writes ``results/sam_attention_variants_<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import (Attention, Block, add_decomposed_rel_pos, get_rel_pos,
                                                     window_partition, window_unpartition)

from cmpf.bench.environment import environment
from cmpf.doctor import cpu_rows
from cmpf.io import write_json, write_text
from sam_int8_cpu import machine_line, onnxruntime_call, openvino_call, report_markdown, timed

RESULTS = Path(__file__).parent / "results"


class FoldedAttention(torch.nn.Module):
    """``Attention`` (global, rel-pos) with the bias inside the Q·Kᵀ product; same parameters."""

    def __init__(self, attn: Attention, grid: tuple[int, int]):
        super().__init__()
        self.attn = attn
        h, w = grid
        token = torch.arange(h * w)
        self.register_buffer("key_onehots", torch.cat([F.one_hot(token // w, h), F.one_hot(token % w, w)], -1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        b, h, w, _ = x.shape
        qkv = a.qkv(x).reshape(b, h * w, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * a.num_heads, h * w, -1).unbind(0)
        r_q = q.reshape(b * a.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, a.rel_pos_h)).reshape(b * a.num_heads, h * w, h)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, a.rel_pos_w)).reshape(b * a.num_heads, h * w, w)
        q_aug = torch.cat([q * a.scale, rel_h, rel_w], -1)
        k_aug = torch.cat([k, self.key_onehots.expand(b * a.num_heads, -1, -1)], -1)
        attn = (q_aug @ k_aug.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).view(b, a.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return a.proj(out)


def _pad_with(x: torch.Tensor, value: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, C) padded at the bottom / right to multiples of ``size`` with the vector ``value``."""
    b, h, w, c = x.shape
    pad_h, pad_w = (size - h % size) % size, (size - w % size) % size
    if pad_w:
        x = torch.cat([x, value.expand(b, h, pad_w, c)], dim=2)
    if pad_h:
        x = torch.cat([x, value.expand(b, pad_h, w + pad_w, c)], dim=1)
    return x


class UnpaddedBlock(torch.nn.Module):
    """A windowed ``Block`` that projects qkv before the window padding and ``proj`` after the crop."""

    def __init__(self, block: Block):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blk, a = self.block, self.block.attn
        shortcut = x
        x = blk.norm1(x)
        h, w = x.shape[1], x.shape[2]
        qkv = a.qkv(x)
        windows, pad_hw = window_partition(_pad_with(qkv, a.qkv.bias, blk.window_size), blk.window_size)
        n, wh, ww, _ = windows.shape
        qkv = windows.reshape(n, wh * ww, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, n * a.num_heads, wh * ww, -1).unbind(0)
        attn = (q * a.scale) @ k.transpose(-2, -1)
        attn = add_decomposed_rel_pos(attn, q, a.rel_pos_h, a.rel_pos_w, (wh, ww), (wh, ww)).softmax(dim=-1)
        out = (attn @ v).view(n, a.num_heads, wh, ww, -1).permute(0, 2, 3, 1, 4).reshape(n, wh, ww, -1)
        x = shortcut + a.proj(window_unpartition(out, blk.window_size, pad_hw, (h, w)))
        return x + blk.mlp(blk.norm2(x))


def modules(grid: int = 64, dim: int = 768, heads: int = 12, window: int = 14) -> dict[str, dict[str, torch.nn.Module]]:
    """Per case, the official module and its rewrite, sharing seeded weights."""
    torch.manual_seed(0)
    attn = Attention(dim, heads, qkv_bias=True, use_rel_pos=True, input_size=(grid, grid))
    block = Block(dim, heads, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                  window_size=window, input_size=(window, window))
    for p in [*attn.parameters(), *block.parameters()]:
        p.data.normal_(0, 0.05)
    return {"global attention": {"official": attn.eval(), "folded": FoldedAttention(attn, (grid, grid)).eval()},
            "windowed block": {"official": block.eval(), "unpadded": UnpaddedBlock(block).eval()}}


def export(module: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["x"], output_names=["y"], verbose=False)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tag", required=True, help="results as sam_attention_variants_<tag>.* (name the machine)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hints", default="f32", help="OpenVINO inference precision hints, comma-separated (f32,bf16)")
    args = p.parse_args()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 64, 64, 768)).astype(np.float32))
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmpf-sam-attention-") as tmp:
        for case, variants in modules().items():
            with torch.no_grad():
                official = variants["official"](x)
            for variant, module in variants.items():
                with torch.no_grad():
                    eager_rel = float((module(x) - official).norm() / official.norm())
                path = export(module, x, Path(tmp) / f"{case.replace(' ', '_')}_{variant}.onnx")
                calls = [("onnxruntime", "f32", onnxruntime_call(path, x.numpy()))]
                calls += [("openvino", hint, openvino_call(path, x.numpy(), hint)) for hint in args.hints.split(",")]
                for backend, hint, call in calls:
                    times, _ = timed(call, args.repeats)
                    rows.append({"case": case, "variant": variant, "backend": backend, "hint": hint,
                                 "p50_s": statistics.median(times), "min_s": min(times), "times_s": times,
                                 "rel_vs_official": eager_rel})
                    print(f"{case} {variant} {backend}:{hint}: p50 {rows[-1]['p50_s']:.3f} s", flush=True)
    for r in rows:
        base = next(o for o in rows if o["case"] == r["case"] and o["backend"] == r["backend"]
                    and o["hint"] == r["hint"] and o["variant"] == "official")
        r["speedup_vs_official"] = base["p50_s"] / r["p50_s"]
    report = {"schema": "cmpf.sam_attention_variants/1", "input": "1x64x64x768", "repeats": args.repeats,
              "rows": rows, "cpu": dict(cpu_rows()), "machine": environment()}
    stem = RESULTS / f"sam_attention_variants_{args.tag}"
    write_json(stem.with_suffix(".json"), report)
    write_text(stem.with_suffix(".md"), markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    return report_markdown(
        f"SAM ViT-B attention: segment-anything's modules vs two exact rewrites ({report['input']})",
        f"{machine_line(report)} {report['repeats']} timed calls after a warm-up.",
        ["case", "variant", "backend", "hint", "p50 s", "min s", "speed-up vs official", "L2-rel vs official (eager)"],
        [[r["case"], r["variant"], r["backend"], r["hint"], f"{r['p50_s']:.3f}", f"{r['min_s']:.3f}",
          f"{r['speedup_vs_official']:.2f}", f"{r['rel_vs_official']:.1e}"] for r in report["rows"]])


if __name__ == "__main__":
    main()
