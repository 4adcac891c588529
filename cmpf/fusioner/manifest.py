"""``manifest.json`` of a Fusioner export: the same format as CMPF's (``cmpf.manifest``), ``"family": "fusioner"``.

``Manifest.to_json`` writes both: format version, model config, inference options, preprocessing
constants, vocabulary, weights, graph specs with their files, producer versions, export command, file
hashes. Here ``model`` is a ``FusionerConfig``, ``inference`` the ``SegmentOptions`` a run defaults to
(the mode among them), ``preprocessing`` the dataset normalisation and the sliding window, and
``clip_weights`` (when ``cmpf export --clip-weights`` gave them apart from the checkpoint) the CLIP file
the frozen towers came from, recorded like ``weights`` (absolute path, sha256). File
verification, artifacts and precision plans are ``cmpf.manifest.Manifest``'s own, so the runners of
``cmpf.runtime`` open Fusioner files exactly as CMPF's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from cmpf.fusioner.config import NORMALISATIONS, FusionerConfig, SegmentOptions
from cmpf.fusioner.graphs import graph_specs
from cmpf.manifest import (MANIFEST_NAME, ArtifactError, Manifest, WeightsRecord, graphs_from_json, read_manifest_json,
                           rebuild_command)
from cmpf.spec import GraphSpec
from cmpf.vocabulary import Vocabulary

FAMILY = "fusioner"


def preprocessing(cfg: FusionerConfig, options: SegmentOptions) -> dict:
    """What every backend does to an image before the graphs (for other readers; checked on reading)."""
    mean, std = NORMALISATIONS[options.normalisation]
    return {
        "normalisation": options.normalisation, "pixel_mean": list(mean), "pixel_std": list(std),
        "formula": "(rgb - 255 * mean) / (255 * std), float32", "window_size": cfg.window_size,
        "window_stride": options.window_stride(cfg.window_size), "pad_value": options.pad_value,
        "axis_order": "NCHW, sizes (H, W), RGB 0-255 input",
    }


@dataclass(frozen=True)
class FusionerManifest(Manifest):
    """A ``Manifest`` whose ``model`` is a ``FusionerConfig`` and ``inference`` a ``SegmentOptions``."""

    family: ClassVar[str] = FAMILY
    clip_weights: Optional[WeightsRecord] = None  # the CLIP towers' file, when apart from ``weights``

    def to_json(self) -> dict:
        data = super().to_json()
        if self.clip_weights is None:
            return data
        keys = list(data)  # written right after "weights"
        keys.insert(keys.index("weights") + 1, "clip_weights")
        return {k: dataclasses.asdict(self.clip_weights) if k == "clip_weights" else data[k] for k in keys}

    def clip_weights_path(self) -> Optional[Path]:
        """The verified CLIP file recorded beside the checkpoint, or None when the checkpoint holds the towers."""
        if self.clip_weights is None:
            return None
        return dataclasses.replace(self, weights=self.clip_weights).weights_path()  # the same checks

    def preprocessing_constants(self) -> dict:
        return preprocessing(self.model, self.inference)

    def expected_specs(self) -> dict[str, GraphSpec]:
        return graph_specs(self.model)

    @staticmethod
    def read(directory: str | Path) -> "FusionerManifest":
        directory = Path(directory)
        data = read_manifest_json(directory)
        if data.get("family") != FAMILY:
            raise ArtifactError(f"{directory}: not a Fusioner export (family {data.get('family', 'cmpf')!r}); "
                                f"export one with `cmpf export --model tiny-fusioner|fusioner-vitl14 --out DIR`")
        try:
            manifest = FusionerManifest(
                model=_dataclass_from_json(FusionerConfig, data["model"]),
                inference=_dataclass_from_json(SegmentOptions, data["inference"]),
                graphs=graphs_from_json(data["graphs"]), spec_args=dict(data["spec_args"]),
                files=dict(data["files"]), producer=dict(data["producer"]), command=data["export"]["command"],
                opset=data["export"].get("opset"),
                vocabulary=Vocabulary.from_json(data["vocabulary"]) if data.get("vocabulary") else None,
                weights=WeightsRecord(**data["weights"]) if data.get("weights") else None, directory=directory,
                clip_weights=WeightsRecord(**data["clip_weights"]) if data.get("clip_weights") else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{directory / MANIFEST_NAME}: malformed manifest ({type(e).__name__}: {e}); "
                                f"re-export with `{rebuild_command(data, directory)}`") from None
        manifest._check(data)
        return manifest


def _dataclass_from_json(cls, data: dict):
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    return cls(**data)
