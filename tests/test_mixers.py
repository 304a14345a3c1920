"""The mixer names, defined once in dmm_kernels/mixers.py: what each means, and that the compiled
block ops (csrc/block/composite.cpp, parse_mixer), the CLI and the model agree with the list."""
import re
from pathlib import Path

import pytest
import torch

import dmm_kernels
from dmm.cli import build_parser
from dmm.model import DecisionMetaMamba
from dmm.nn import MambaBlock, MetaMambaBlock
from dmm_kernels import mixers, reference

ROOT = Path(__file__).resolve().parents[1]


def test_parse():
    assert mixers.parse("dense", 3) == ("line", "line", False, 1)
    assert mixers.parse("double-conv", 3) == ("double-conv", "conv", True, 3)
    assert mixers.parse("line", 2) == ("line", "line", False, 2)
    assert mixers.canonical("double-line", 3) == ("double-line", 3)
    with pytest.raises(ValueError, match=r"mixer must be one of conv, line, double-conv, "
                                         r"double-line, dense; got 'none' \(no mixer"):
        mixers.parse("none")
    with pytest.raises(ValueError, match="got 'conv2'"):
        mixers.parse("conv2")
    with pytest.raises(ValueError, match="window must be >= 1; got 0"):
        mixers.check_window(0)
    assert set(mixers.SINGLE_MIXERS) == {m for m in mixers.MIXERS if not mixers.parse(m).double}


def test_cpp_parses_the_same_names():
    """parse_mixer in the C++ block accepts exactly BLOCK_MIXERS (read from its source)."""
    source = (ROOT / "csrc/block/composite.cpp").read_text()
    body = re.search(r"MixerSpec parse_mixer\(c10::string_view mixer\) \{(.*?)\n\}", source, re.S)
    assert body, "parse_mixer not found in csrc/block/composite.cpp"
    accepted = re.findall(r's == "([a-z-]+)"', body.group(1))
    assert sorted(accepted) == sorted(mixers.BLOCK_MIXERS)


@pytest.mark.skipif(not dmm_kernels.EXTENSION_LOADED, reason="compiled ops not built")
@pytest.mark.parametrize("name", mixers.MODEL_MIXERS + ("double-dense", "Conv"))
def test_compiled_checker_agrees(name):
    """The compiled op's own check accepts the block names and rejects every other by name."""
    spec = mixers.parse(name if name in mixers.BLOCK_MIXERS else "conv")
    params = reference.make_block_params(8, spec.name, d_state=4, window=3, dtype=torch.float64)
    h = torch.randn(2, 5, 8, dtype=torch.float64)
    check = lambda: torch.ops.dmm._check_block(h, *params, name, 3)  # noqa: E731
    if name in mixers.BLOCK_MIXERS:
        check()
    else:
        with pytest.raises(RuntimeError, match=f'mixer must be one of .*got "{name}"'):
            check()


def test_cli_choices_and_model_blocks():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    mixer = next(a for a in train._actions if a.dest == "mixer")
    assert tuple(mixer.choices) == mixers.MODEL_MIXERS
    plain = DecisionMetaMamba(3, 2, d_model=16, n_layers=2, mixer="none")
    assert all(type(b) is MambaBlock for b in plain.blocks)
    meta = DecisionMetaMamba(3, 2, d_model=16, n_layers=2, mixer="dense", preset="v2")
    assert all(type(b) is MetaMambaBlock for b in meta.blocks)
