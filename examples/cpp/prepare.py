"""Precompute what the C++ program needs besides the AOTInductor packages: text embeddings + constants.

    python examples/cpp/prepare.py ARTIFACTS [--classes 'cat;dog,puppy;sky' [--things 'cat;dog']] --out BUNDLE

Runs the artifact directory's own ``text_encoder`` package (so C++ needs no tokenizer) on the
vocabulary (``--vocab``/``--classes``, else the one the export recorded, as ``cmpf run`` does) and
writes, into BUNDLE/:

    text_embeddings.f32   (K, S, D) float32, C order: the text classifier (``cmpf.text.TextCache``)
    synonym_mask.u8       (K, S) uint8: 1 where class k has an s-th synonym
    meta.txt              one "key values..." line each: sizes, preprocessing constants, the ensemble's
                          alpha, beta and seen classes, the panoptic thresholds and thing flags
    classes.txt           the class names (first synonyms), one a line, in class-index order
    graphs.txt            "<graph> inputs|outputs <names...>": each graph's tensor names in cmpf/spec.py's
                          order (the AOTInductor program passes them in that order, the TensorRT one binds
                          them by name)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmpf.io import write_bytes, write_text
from cmpf.manifest import Manifest
from cmpf.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, SAM_PIXEL_MEAN, SAM_PIXEL_STD
from cmpf.runtime import load_runner
from cmpf.text import TextCache
from cmpf.vocabulary import load_vocabulary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("artifacts", help="an artifact directory exported with --format aoti")
    p.add_argument("--classes", help="'cat;dog,puppy;sky' (or --vocab FILE)")
    p.add_argument("--vocab", help="a vocabulary file")
    p.add_argument("--things", help="thing classes among them: 'cat;dog' (default: all)")
    p.add_argument("--out", required=True, help="the bundle directory to write")
    args = p.parse_args()
    manifest = Manifest.read(args.artifacts)
    vocabulary = load_vocabulary(args.vocab, args.classes, args.things, required=False) or manifest.vocabulary
    if vocabulary is None:
        raise SystemExit("no vocabulary: give --vocab FILE or --classes 'cat;dog,puppy' (the export recorded none)")
    options, cfg = manifest.inference, manifest.model
    text = TextCache(load_runner("aoti", manifest.artifact("text_encoder", "aoti")), options.text_batch).get(vocabulary)
    k, s, d = text.embeddings.shape
    out = Path(args.out)
    write_bytes(out / "text_embeddings.f32", text.embeddings.float().contiguous().numpy().tobytes())
    write_bytes(out / "synonym_mask.u8", text.synonym_mask.to("cpu").byte().contiguous().numpy().tobytes())
    lines = {
        "shape": (k, s, d), "clip_mean": CLIP_PIXEL_MEAN, "clip_std": CLIP_PIXEL_STD, "sam_mean": SAM_PIXEL_MEAN,
        "sam_std": SAM_PIXEL_STD, "divisibility": (cfg.size_divisibility,), "sam_size": (cfg.sam_input_size,),
        "alpha": (options.ensemble_alpha,), "beta": (options.ensemble_beta,),
        "valid_mask": (int(options.ensemble_on_valid_mask),), "seen": options.seen_mask(vocabulary.classes),
        "object_mask_threshold": (options.object_mask_threshold,), "overlap_threshold": (options.overlap_threshold,),
        "is_thing": vocabulary.is_thing,
    }
    write_text(out / "meta.txt", "".join(f"{key} {' '.join(repr(float(v)) for v in values)}\n"
                                         for key, values in lines.items()))
    write_text(out / "classes.txt", "".join(f"{syns[0]}\n" for syns in vocabulary.classes))
    write_text(out / "graphs.txt", "".join(
        f"{graph} {side} {' '.join(t.name for t in getattr(entry.spec, side))}\n"
        for graph, entry in manifest.graphs.items() for side in ("inputs", "outputs")))
    print(f"wrote {out}/: {k} classes x {s} synonyms x {d}")


if __name__ == "__main__":
    main()
