"""Benchmarks and parity checks as small library calls (``cmpf bench``, ``cmpf parity``, ``cmpf demo``).

``timing`` (warm-up, median / p90 of synchronised calls), ``parity`` (inputs captured from the
pipeline, eager vs backend per graph, the fp32 tolerance table), ``stages`` (per-stage latency of
the pipeline through the ``Runner`` calls).
"""
