"""Log-depth tl.associative_scan / tl.reduce for Triton's interpreter (TRITON_INTERPRET=1).

The interpreter runs a scan or reduction with a user combine function one element at a time in
Python, which makes a [channels, chunk] scan cost seconds. These replacements call the same combine
function on whole slices: a scan in log2(n) Hillis-Steele steps (position i takes
combine(x[i - d], x[i]) for d = 1, 2, 4, ...), a reduction by combining neighbours pairwise. Both are exact for an
associative combine function (they differ from the element-wise fold only in rounding, as the
compiled tree does), and the combine function itself still runs through the interpreter.
"""
from __future__ import annotations

import numpy as np


def _tensors(ops, arrays, like):
    return tuple(ops.to_tensor(a, x.dtype) for a, x in zip(arrays, like))


def _combine(ops, left, right, like):
    out = ops.combine_fn.fn(*_tensors(ops, left, like), *_tensors(ops, right, like))
    out = out if isinstance(out, tuple) else (out,)
    shape = left[0].shape
    return [np.broadcast_to(np.asarray(o.handle.data if hasattr(o, "handle") else o), shape)
            .astype(a.dtype) for o, a in zip(out, left)]


def _scan(self, input):
    """Inclusive scan along self.axis (the interpreter flips for reverse=True before and after)."""
    arrays = [np.moveaxis(x.handle.data, self.axis, 0) for x in input]
    n, d = arrays[0].shape[0], 1
    while d < n:  # whole (power-of-two) tiles: position i < d combines a wrapped value, not kept
        combined = _combine(self, [np.roll(a, d, axis=0) for a in arrays], arrays, input)
        arrays = [np.concatenate([a[:d], c[d:]]) for a, c in zip(arrays, combined)]
        d *= 2
    return [self.to_tensor(np.moveaxis(a, 0, self.axis), x.dtype) for a, x in zip(arrays, input)]


def _reduce(self, input):
    if self.axis is None:
        return _generic_reduce(self, input)
    arrays = [np.moveaxis(x.handle.data, self.axis, 0) for x in input]
    while arrays[0].shape[0] > 1:
        even = arrays[0].shape[0] // 2 * 2  # neighbours (0, 1), (2, 3), ...: the order is kept
        combined = _combine(self, [a[0:even:2] for a in arrays], [a[1:even:2] for a in arrays], input)
        arrays = [np.concatenate([c, a[even:]]) for a, c in zip(arrays, combined)]
    out = [a[0] for a in arrays]
    if self.keep_dims:
        out = [np.expand_dims(a, self.axis) for a in out]
    return [self.to_tensor(a, x.dtype) for a, x in zip(out, input)]


_generic_reduce = None


def install() -> None:
    """Replace the interpreter's element-wise generic scan / reduce (once; no-op if its internals
    are not the expected ones)."""
    global _generic_reduce
    try:
        from triton.runtime import interpreter
        scan_ops, reduce_ops = interpreter.ScanOps, interpreter.ReduceOps
        original = reduce_ops.generic_reduce
    except (ImportError, AttributeError):
        return
    if original is _reduce:
        return
    _generic_reduce = original
    scan_ops.generic_scan = _scan
    reduce_ops.generic_reduce = _reduce
