"""Skip markers for tests whose prerequisites a machine may lack, saying what is
missing and how to provide it."""

from __future__ import annotations

import importlib

import pytest

__all__ = ["HAVE_LIBVIRT", "requires_libvirt"]


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


HAVE_LIBVIRT = _importable("libvirt")

requires_libvirt = pytest.mark.skipif(
    not HAVE_LIBVIRT,
    reason="libvirt-python is not importable: apt-get install python3-libvirt "
    "(the venv of scripts/setup sees it through --system-site-packages)",
)
