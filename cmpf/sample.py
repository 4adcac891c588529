"""The bundled sample image and the classes it shows: the default input of bench, parity, quantize checks and tests."""

from __future__ import annotations

from importlib.resources import files

SAMPLE_IMAGE = files("cmpf") / "assets" / "sample.png"  # 240×320 synthetic scene: sky, grass, sun, house, pond
SAMPLE_CLASSES = "sky;grass;sun;house,building;roof;pond,water"
