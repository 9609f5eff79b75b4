"""Type stub of the Rust extension ``vlmfast._native`` (checked by mypy.stubtest in ``make lint``)."""

__all__ = ["__version__", "worker_threads"]

__version__: str

def worker_threads() -> int:
    """Number of worker threads the native core uses for parallel work."""
