"""Export: the model's graphs → ONNX files and AOTInductor packages + ``manifest.json``.

``graphs`` (flat named-tensor wrappers of the model's own methods) → ``program`` (``torch.export``
with the dims of ``cmpf.spec``) → ``onnx`` / ``aoti`` (one file per graph, written atomically) →
``manifest`` (config, specs, versions, hashes). ``api.export_model`` runs the stages in order;
``cmpf export`` is its command line. Nothing is imported here, so ``cmpf.runtime`` can read
manifests without the model code.
"""
