"""The MetaMamba block's parameters as one named bundle, in the order of the op schemas.

`BlockParams` is what every block function takes (dmm_kernels.metamamba_block / _prefill /
_step, the reference, the Triton backend) and what `MetaMambaBlock.block_params()` returns;
`*params` spreads it into a torch.ops.dmm call. csrc/block/params.h lists the same fields in the
same order (DMM_BLOCK_PARAMS).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

# Kept in float32 under autocast: the scan accumulates its state from them.
SCAN_PARAMS = ("dt_proj_bias", "A_log", "D")
# May be None: the line mixers have no bias, single mixers no mixer2.
OPTIONAL_PARAMS = ("mixer1_bias", "mixer2_weight", "mixer2_bias")


class BlockParams(NamedTuple):
    """Shapes: D d_model, E inner width, N state size, R dt rank, W window, M modalities.
    mixer weights: conv (M, W, width), line (M, width, W*width); biases (M, width)."""
    norm1_weight: torch.Tensor            # (D,)
    norm1_bias: torch.Tensor              # (D,)
    mixer1_weight: torch.Tensor           # width D
    mixer1_bias: torch.Tensor | None
    norm2_weight: torch.Tensor            # (D,)
    norm2_bias: torch.Tensor              # (D,)
    in_proj_weight: torch.Tensor          # (2E, D)
    mixer2_weight: torch.Tensor | None    # width E, double mixers
    mixer2_bias: torch.Tensor | None
    x_proj_weight: torch.Tensor           # (R + 2N, E)
    dt_proj_weight: torch.Tensor          # (E, R)
    dt_proj_bias: torch.Tensor            # (E,)
    A_log: torch.Tensor                   # (E, N)
    D: torch.Tensor                       # (E,)
    out_proj_weight: torch.Tensor         # (D, E)

    @classmethod
    def of(cls, params: BlockParams | Mapping) -> BlockParams:
        """`params` as a BlockParams: itself, or a mapping with the field names as keys (the
        optional ones may be left out)."""
        if isinstance(params, cls):
            return params
        if not isinstance(params, Mapping):
            raise TypeError(f"block params must be a BlockParams or a mapping with keys "
                            f"{cls._fields}; got {type(params).__name__}")
        unknown = sorted(set(params) - set(cls._fields))
        missing = [k for k in cls._fields if params.get(k) is None and k not in OPTIONAL_PARAMS]
        if unknown or missing:
            raise ValueError(f"block params: missing {missing}, unknown {unknown}; expected keys "
                             f"{cls._fields}")
        return cls(**{k: params.get(k) for k in cls._fields})

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], names=None) -> BlockParams:
        """fn applied to every present tensor (or to those in `names`); None stays None."""
        return BlockParams(*(v if v is None or (names is not None and k not in names) else fn(v)
                             for k, v in zip(self._fields, self)))

    def present(self) -> dict[str, torch.Tensor]:
        """name -> tensor for the parameters that are not None, in order."""
        return {k: v for k, v in zip(self._fields, self) if v is not None}
