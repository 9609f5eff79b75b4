"""Triton kernels of vlmfast, shipped as ``vlmfast._kernels`` (see kernels/README.md).

Import them through ``vlmfast.ops``, which dispatches per call and falls back
to the torch reference off-GPU; never import this package by its source path.
"""
