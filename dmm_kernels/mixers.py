"""The token mixers, defined once: their names, what each name means, and the window rules.

A mixer name is what a user types (`dmm train --mixer`, a config's model.mixer) and what the
ops take. Every other file asks this one what a name means:
  conv, line            one modal mixer (kind conv or line) before the SSM, one filter per modality
  double-conv, double-line  a second one on the x half of in_proj, and a residual around the SSM
  dense                 the v2 mixer: line with one modality (the ops see "line", M = 1)
  none                  no mixer: the plain Mamba block of Decision Mamba (dmm.nn.MambaBlock);
                        a model choice only, the block ops never see it
The compiled block ops parse BLOCK_MIXERS in csrc/block/composite.cpp (parse_mixer);
tests/test_mixers.py checks the two lists agree.
"""
from __future__ import annotations

from typing import NamedTuple

KINDS = ("conv", "line")                                  # modal_mix kinds
BLOCK_MIXERS = ("conv", "line", "double-conv", "double-line")  # what the compiled block ops parse
MIXERS = BLOCK_MIXERS + ("dense",)                        # what the block ops accept
NO_MIXER = "none"
MODEL_MIXERS = MIXERS + (NO_MIXER,)                       # what a model (and the CLI) accepts
SINGLE_MIXERS = ("conv", "line", "dense")                 # one mixer per block: can be shared


class Mixer(NamedTuple):
    """A parsed mixer: `name` as the block ops take it (dense -> line), the modal_mix `kind`,
    `double` (a second mixer and the residual around the SSM) and the modality count."""
    name: str
    kind: str
    double: bool
    n_modalities: int


def check_model_mixer(mixer: str, who: str = "mixer") -> str:
    if mixer not in MODEL_MIXERS:
        raise ValueError(f"{who} must be one of {', '.join(MODEL_MIXERS)}; got {mixer!r}")
    return mixer


def parse(mixer: str, n_modalities: int = 3) -> Mixer:
    """A block mixer name (not "none") and its modality count, canonicalised."""
    if mixer == "dense":
        return Mixer("line", "line", False, 1)
    if mixer not in BLOCK_MIXERS:
        raise ValueError(f"mixer must be one of {', '.join(MIXERS)}; got {mixer!r}"
                         + (" (no mixer: the plain Mamba block, dmm.nn.MambaBlock)"
                            if mixer == NO_MIXER else ""))
    return Mixer(mixer, mixer.removeprefix("double-"), mixer.startswith("double-"), n_modalities)


def canonical(mixer: str, n_modalities: int) -> tuple[str, int]:
    """(name the block ops take, modality count): "dense" is "line" with one modality."""
    m = parse(mixer, n_modalities)
    return m.name, m.n_modalities


def check_window(window: int, who: str = "window") -> int:
    if window < 1:
        raise ValueError(f"{who} must be >= 1; got {window}")
    return window


def window_of(weight, kind: str, width: int) -> int:
    """Window W of a mixer weight: (M, W, width) for conv, (M, width_out, W*width) for line."""
    return weight.shape[1] if kind == "conv" else weight.shape[2] // width
