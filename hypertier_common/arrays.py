"""The numpy array types the project annotates with, one name per dtype.

``F64`` is ``npt.NDArray[np.float64]``, and so on: short, because vectorised
code passes many of them, and shared, so one dtype has one name everywhere.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["F64", "I32", "I64", "U8", "U32", "U64", "BoolArray"]

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]
