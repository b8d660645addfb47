"""HyperTier's tests. ``DATA``: the captured kernel, sysfs and libvirt files
the parser and backend tests read (tests/data, each with its source noted)."""

from pathlib import Path

__all__ = ["DATA"]

DATA = Path(__file__).resolve().parent / "data"
