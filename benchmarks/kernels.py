"""Micro-benchmark: the Triton kernels vs the torch paths they replace, at the model's shapes.

ADE 800x1067 padded to 800x1088 gives stride-8/16/32 token grids of 100x136, 50x68 and 25x34.
  * masked attention: Q=250 queries, 8 heads of 32, keys = one level (as each Mask2Former layer);
    vs SDPA with a boolean mask (after the Mask2Former empty-row reset) and vs the matmul reference.
  * mask pooling: features (1,256,200,272) or SAM (1,256,64,64), logits (1,250,200,272); vs the einsum path.
  * deformable attention: 3 levels, 8 heads, 4 points, Lq = all 17850 tokens; vs the grid_sample path.
Each torch path is timed eager and under torch.compile. Times are medians of ``triton.testing.do_bench``.

Needs only torch, triton and cmpf/kernels (run from the repository root):
    PYTHONPATH=. python benchmarks/kernels.py --out benchmarks/results/kernels_h200.json
``--smoke`` runs tiny shapes on CPU through TRITON_INTERPRET=1 to check the script itself (no timings worth reading).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

LEVELS = [(100, 136), (50, 68), (25, 34)]
SMOKE_LEVELS = [(10, 14), (5, 7), (3, 4)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/kernels_<gpu>.json)")
    parser.add_argument("--dtypes", default="fp16,fp32", help="comma-separated: fp32, fp16, bf16")
    parser.add_argument("--ops", default="masked_attention,mask_pooling,ms_deform_attn")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are built
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    import triton

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("benchmarks/kernels.py needs a CUDA GPU (or --smoke to check the script on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    bench = Bench(device, smoke=args.smoke, compile_baselines=not args.no_compile)
    results = []
    for name in args.dtypes.split(","):
        for op in args.ops.split(","):
            results += CASES[op](bench, dtypes[name])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-interpreter ({platform.machine()})"
    report = {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "timing": "median ms of triton.testing.do_bench (warmup 25 ms, rep 100 ms)",
        "parity": "max |out - fp64 reference| for the kernel and for the eager torch path at the same dtype",
        "results": results,
    }
    out = args.out or Path(__file__).parent / "results" / f"kernels_{_slug(gpu)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        speedups = ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup"].items())
        print(f"{r['op']:17s} {r['case']:28s} {r['dtype']:5s} triton {r['ms']['triton']:.4f} ms | {speedups} "
              f"| err {r['max_abs_err']['triton']:.2e} (torch {r['max_abs_err']['torch']:.2e})")
    print(f"wrote {out}")


class Bench:
    def __init__(self, device, smoke: bool, compile_baselines: bool):
        self.device = device
        self.smoke = smoke
        self.compile_baselines = compile_baselines

    def time(self, fn) -> float:
        if self.smoke:  # the interpreter: one run, wall clock
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))

    def compiled(self, fn):
        if not self.compile_baselines or self.smoke:
            return None
        import torch

        torch._dynamo.reset()
        return torch.compile(fn)

    def record(self, op, case, dtype, kernel, baselines: dict, ref64, args) -> dict:
        """Time ``kernel`` and each baseline (name -> fn, eager; compiled too when enabled); measure parity."""
        import torch

        out = kernel(*args)
        torch_out = next(iter(baselines.values()))(*args)
        torch_diff = (torch_out.double() - ref64).abs()
        finite = torch.isfinite(torch_diff)
        errors = {
            "triton": (out.double() - ref64).abs().max().item(),
            "torch": torch_diff[finite].max().item(),  # over its finite outputs
            "torch_nonfinite_outputs": int((~finite).sum().item()),  # e.g. fp16 0/0 for empty masks
        }
        ms = {"triton": self.time(lambda: kernel(*args))}
        for name, fn in baselines.items():
            ms[f"{name}_eager"] = self.time(lambda: fn(*args))
            compiled = self.compiled(fn)
            if compiled is not None:
                try:
                    compiled(*args)
                    ms[f"{name}_compile"] = self.time(lambda: compiled(*args))
                except Exception as exc:  # report, do not abort the whole run
                    ms[f"{name}_compile"] = None
                    print(f"torch.compile failed for {op}/{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        speedup = {k: v / ms["triton"] for k, v in ms.items() if k != "triton" and v}
        return {"op": op, "case": case, "dtype": str(dtype).replace("torch.", ""), "ms": ms,
                "speedup": speedup, "max_abs_err": errors}


def bench_masked_attention(bench: Bench, dtype) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from cmpf.kernels.masked_attention import masked_attention, masked_attention_ref

    def sdpa_bool_mask(q, k, v, blocked):
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)  # Mask2Former: empty rows see everything
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked)

    lq = 25 if bench.smoke else 250
    results = []
    for h, w in SMOKE_LEVELS if bench.smoke else LEVELS:
        torch.manual_seed(0)
        lk = h * w
        q, k, v = (torch.randn(1, 8, n, 32, device=bench.device).to(dtype) for n in (lq, lk, lk))
        low = torch.randn(1, lq, h // 8 + 2, w // 8 + 2, device=bench.device)  # spatially coherent masks
        blocked = (F.interpolate(low, size=(h, w), mode="bilinear") < 0.5).flatten(2)[:, None]
        blocked[:, :, : lq // 50 + 1] = True  # a few empty masks
        ref64 = masked_attention_ref(q.double(), k.double(), v.double(), blocked)
        results.append(bench.record(
            "masked_attention", f"Lq{lq}-Lk{lk}({h}x{w})-h8-d32", dtype,
            lambda *a: masked_attention(*a, impl="triton"),
            {"sdpa_bool_mask": sdpa_bool_mask, "matmul_ref": masked_attention_ref},
            ref64, (q, k, v, blocked),
        ))
    return results


def bench_mask_pooling(bench: Bench, dtype) -> list[dict]:
    import torch

    from cmpf.kernels.mask_pooling import mask_pooling, mask_pooling_ref

    logit_hw = (20, 27) if bench.smoke else (200, 272)
    results = []
    for label, feat_hw in (("stride4", logit_hw), ("sam", (8, 8) if bench.smoke else (64, 64))):
        torch.manual_seed(0)
        q = 25 if bench.smoke else 250
        x = torch.randn(1, 256, *feat_hw, device=bench.device).to(dtype)
        logits = torch.randn(1, q, *logit_hw, device=bench.device).to(dtype)
        ref64 = mask_pooling_ref(x.double(), logits.double())
        results.append(bench.record(
            "mask_pooling", f"{label}-x{tuple(x.shape)}-logits{tuple(logits.shape)}", dtype,
            lambda *a: mask_pooling(*a, impl="triton"), {"einsum_ref": mask_pooling_ref}, ref64, (x, logits),
        ))
    return results


def bench_ms_deform_attn(bench: Bench, dtype) -> list[dict]:
    import torch

    from cmpf.kernels.ms_deform_attn import ms_deform_attn, ms_deform_attn_ref

    levels = SMOKE_LEVELS if bench.smoke else LEVELS
    s = sum(h * w for h, w in levels)
    torch.manual_seed(0)
    value = torch.randn(1, s, 8, 32, device=bench.device).to(dtype)
    loc = (torch.rand(1, s, 8, 3, 4, 2, device=bench.device) * 1.2 - 0.1).to(dtype)
    weights = torch.randn(1, s, 8, 12, device=bench.device).softmax(-1).view(1, s, 8, 3, 4).to(dtype)
    ref64 = ms_deform_attn_ref(value.double(), levels, loc.double(), weights.double())
    return [bench.record(
        "ms_deform_attn", f"Lq{s}-3lvl-h8-d32-p4", dtype,
        lambda v, lo, w: ms_deform_attn(v, levels, lo, w, impl="triton"),
        {"grid_sample_ref": lambda v, lo, w: ms_deform_attn_ref(v, levels, lo, w)},
        ref64, (value, loc, weights),
    )]


CASES = {
    "masked_attention": bench_masked_attention,
    "mask_pooling": bench_mask_pooling,
    "ms_deform_attn": bench_ms_deform_attn,
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


if __name__ == "__main__":
    main()
