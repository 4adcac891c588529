"""Kernels for the decoder's hot spots. Each module holds, in order: the torch reference (the model's
own code path, export-safe), the Triton kernel, a checked launcher and the ``torch.library``
registration. Triton is imported lazily, only when a Triton path is selected."""
