"""Let mmengine checkpoints load under torch's ``weights_only=True`` default.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 then refuses the
non-tensor objects an mmengine checkpoint carries: its ``HistoryBuffer`` logs, numpy arrays and
scalars, and ``getattr(HistoryBuffer, 'min')``-style references to the buffer's statistics
methods. Rather than turning the safety check off for every load
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``), we allow exactly those:

- ``HistoryBuffer`` and numpy's array/scalar reconstruction (plain data);
- in place of ``builtins.getattr``, a function that only resolves HistoryBuffer's own methods
  and raises for anything else, so a checkpoint still cannot reach arbitrary callables.

Trust model: with this, ``load_from``/``resume`` keep torch's weights-only unpickler, so a
checkpoint from an untrusted source cannot run code. A checkpoint that needs more than the above
fails to load; load it with ``weights_only=False`` only if you trust it (it is then equivalent to
running its author's code).
"""
import pickle

import numpy as np
import torch


def _numpy_globals() -> list:
    multiarray = getattr(np, '_core', None) or np.core
    dtype_classes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                                 np.int64, np.uint8, np.bool_)]
    return [multiarray.multiarray._reconstruct, multiarray.multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def _history_buffer_getattr(obj, name: str):
    """``getattr`` restricted to HistoryBuffer's statistics methods (what mmengine pickles)."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and not name.startswith('_') and callable(getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'weights-only load: getattr({obj!r}, {name!r}) is not allowed')


def allow_mmengine_checkpoints() -> None:
    """Extend torch's weights-only allowlist with what mmengine checkpoints contain
    (idempotent; a no-op on a torch without the allowlist)."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:
        return
    from mmengine.logging import HistoryBuffer
    add([HistoryBuffer, *_numpy_globals(), (_history_buffer_getattr, 'builtins.getattr'),
         (_history_buffer_getattr, '__builtin__.getattr')])
