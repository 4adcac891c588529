"""The default input of ``cmpf bench`` and ``cmpf parity``: the bundled sample image and the classes it shows."""

from __future__ import annotations

from importlib.resources import files

SAMPLE_IMAGE = files("cmpf") / "assets" / "sample.png"  # 240×320 synthetic scene: sky, grass, sun, house, pond
SAMPLE_CLASSES = "sky;grass;sun;house,building;roof;pond,water"
