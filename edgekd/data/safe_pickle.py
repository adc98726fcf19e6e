"""Allow-list unpickler for the pandas-1.x pickle of UCI HAPT (never for anything else).

The file references exactly the globals in `ALLOWED` (measured on the packaged file).
Pandas classes become inert `PandasStandIn` objects that only keep their pickled state, so pandas
is neither needed nor run; the numpy reconstructors are numpy's own; `copy_reg._reconstructor`
and `_codecs.encode` are replaced by narrow versions that can only build a stand-in and only
latin-1-encode text. Any other global raises DataError naming it, before anything is called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from edgekd.errors import DataError

try:  # numpy >= 2 names the module numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.26
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class PandasStandIn:
    """Inert placeholder for a pickled pandas object: `state` holds what pickle passed to it."""

    pandas_name = ""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class DataFrameStandIn(PandasStandIn):
    pandas_name = "pandas.core.frame.DataFrame"


class BlockManagerStandIn(PandasStandIn):
    pandas_name = "pandas.core.internals.managers.BlockManager"


class IndexStandIn(PandasStandIn):
    pandas_name = "pandas.core.indexes.base.Index"


class RangeIndexStandIn(PandasStandIn):
    pandas_name = "pandas.core.indexes.range.RangeIndex"


_STAND_INS = (DataFrameStandIn, BlockManagerStandIn, IndexStandIn, RangeIndexStandIn)


def _reconstructor(cls: type, base: type, state: Any) -> PandasStandIn:
    """`copy_reg._reconstructor` limited to `object.__new__` of a stand-in class."""
    if cls not in _STAND_INS or base is not object or state is not None:
        raise DataError(f"refused copy_reg._reconstructor({cls!r}, {base!r}, ...)")
    return cls()


def _new_index(cls: type, state: dict[str, Any]) -> PandasStandIn:
    """`pandas.core.indexes.base._new_Index`: an index stand-in holding its state dict."""
    if cls not in (IndexStandIn, RangeIndexStandIn):
        raise DataError(f"refused pandas _new_Index({cls!r}, ...)")
    obj = cls()
    obj.__setstate__(state)
    return obj


def _latin1_encode(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for numpy buffers (latin-1 only)."""
    if encoding not in ("latin1", "latin-1"):
        raise DataError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


# Raw (Python 2) module names: fix_imports is off, so find_class sees them as written.
ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("__builtin__", "slice"): slice,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("pandas.core.frame", "DataFrame"): DataFrameStandIn,
    ("pandas.core.internals.managers", "BlockManager"): BlockManagerStandIn,
    ("pandas.core.indexes.base", "Index"): IndexStandIn,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("pandas.core.indexes.range", "RangeIndex"): RangeIndexStandIn,
}


class AllowListUnpickler(pickle.Unpickler):
    """Unpickler resolving only the globals in `ALLOWED`; anything else raises DataError."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refused to unpickle global {module}.{name}: not on the HAPT allow-list "
                "(the file is not the expected dataset, or it was tampered with)"
            ) from None


def restricted_load(stream: BinaryIO | bytes) -> Any:
    """Unpickle `stream` (a binary file object or bytes) with the allow-list.

    Raises DataError for a refused global or a malformed pickle.
    """
    if isinstance(stream, bytes):
        stream = io.BytesIO(stream)
    unpickler = AllowListUnpickler(stream, fix_imports=False, encoding="latin1")
    try:
        return unpickler.load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"malformed pickle: {type(exc).__name__}: {exc}") from exc
