"""Benchmarks and parity checks as small library calls (``cmpf bench``, ``cmpf parity``, ``cmpf demo``).

Parity: ``parity`` (graph inputs captured from the pipeline, eager vs backend per graph output),
``agreement`` (one image's candidate vs reference segmentation), ``gates`` (``--fail-on`` rules over
the defaults of ``cmpf.tolerances``), ``captured_inputs`` (Polygraphy's ``--load-inputs`` JSON),
``parity_report`` (the versioned JSON and Markdown), ``parity_run`` (the three levels, end to end).
Bench: ``timing`` (warm-up, percentiles, the timing mode), ``stages`` (per-stage latency through
the ``Runner`` calls, host transfer in or out), ``cuda_graphs`` (``--cuda-graph`` capture and replay),
``environment`` (the machine block), ``bench_run`` (batch × shape sweep), ``matrix`` (backend ×
precision in one report), ``bench_report`` (JSON / CSV / Markdown, ``--compare``), ``plots``
(matplotlib PNGs), ``sample`` (the default image and its classes).
"""
