"""Loaders that turn original checkpoints into the internal format of ``vlmfast.models``."""
