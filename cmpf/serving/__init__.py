"""Serving: exported artifacts behind NVIDIA Triton Inference Server, and a client for it.

    protocol.py     the wire format of the one model, ``cmpf_segment`` (names, dtypes, result JSON)
    repository.py   ``ServeConfig`` → a Triton model repository (config.pbtxt from Triton's own protobuf)
    model.py        the Python-backend model: requests → ``Predictor.segment`` → responses (runs in the stub)
    server.py       ``TritonServer``: start / stop a ``tritonserver`` process; ``serve`` (``cmpf serve``)
    client.py       ``SegmentClient`` (tritonclient) and ``client_run`` (``cmpf client``)
    triton_repo.py  a repository for a standalone server: one model per graph + ``cmpf_segment`` over BLS
    bls.py          ``BlsRunner`` (a Runner whose call is a BLS request) and Python-backend graph models

The server is the ``tritonserver`` binary (Triton 2.45) bundled in the ``nvidia-pytriton`` wheel,
with its Python backend; the model runs ``cmpf.predictor`` inside the backend's stub process. Why
not PyTriton's own ``Triton().bind(...)`` layer, and what the stub needs on this stack (found while
building this, December 2026):

1. ``'_thread.RLock' object has no attribute '_recursion_count'`` (pytriton issue #51; "works on
   3.11.5, fails on 3.11.7"). Cause: the stub binary links ``libpython3.11.so.1.0`` dynamically and,
   without help, the loader finds the system's (Debian's 3.11.2 here), while the standard library it
   then imports is the running interpreter's (pyenv 3.11.7). 3.11.6 back-ported a reentrancy fix to
   ``multiprocessing.resource_tracker`` (CPython gh-109629) that calls ``RLock._recursion_count``,
   which the older C ``_thread`` module lacks. Fix, with no other interpreter needed: put this
   interpreter's own ``libpython`` directory (``sysconfig.get_config_var("LIBDIR")``) first on the
   server's ``LD_LIBRARY_PATH``, so that the C part and the library part are the same release
   (``server.server_env``). Any interpreter with a shared libpython works this way (pyenv builds
   here have one); the stub must match the minor version (the wheel ships 3.8 - 3.12).
2. The stub's pybind11 is built against numpy 1's C layout: under numpy 2 (this stack pins 2.3.5)
   every ``Tensor.as_numpy()`` / ``pb_utils.Tensor(name, ndarray)`` moves zero bytes (inputs read as
   zeros, outputs as empty). That is why nvidia-pytriton 0.5.8 and later require ``numpy<2``
   (pytriton commit 58afc55, "Disallow use of NumPy 2"; issue #93 asks to lift it), which this
   stack cannot install; 0.5.7, the last release without that pin, is used for its binaries. PyTriton's
   proxy passes every tensor through ``as_numpy``, so its ``bind`` layer cannot work under numpy 2;
   ``cmpf.serving.model`` reads and writes tensors through DLPack (``to_dlpack`` /
   ``Tensor.from_dlpack`` with torch), which does not touch numpy's C structures, and strings travel
   as uint8 tensors for the same reason.
"""
