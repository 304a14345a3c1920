"""MetaMambaBlock (and MambaBlock, mixer "none") as a drop-in for mamba_ssm.Mamba at inference: mamba-ssm's generation protocol
(InferenceParams: a parallel prefill, then one token per call), step() on (B, 1, D) and (B, D)
with the cache keeping its own position, allocate_inference_cache's signature. Every mixer;
float64 and eval, so a generation loop must equal the full forward to rounding."""
from dataclasses import dataclass, field

import pytest
import torch

from dmm import MetaMambaBlock
from dmm.nn import make_block

D_MODEL, WINDOW = 8, 3
# (mixer, preset, faithful): every mixer, and the authors' channel-sliced line mixers.
CASES = [("conv", "v1", False), ("line", "v1", False), ("double-conv", "v1", False),
         ("double-line", "v1", False), ("dense", "v2", False), ("none", "v1", False),
         ("line", "v1", True), ("double-line", "v1", True), ("dense", "v2", True)]
IDS = [f"{m}-{p}" + ("-faithful" if f else "") for m, p, f in CASES]


@dataclass
class InferenceParams:
    """The fields of mamba_ssm.utils.generation.InferenceParams that a layer reads."""
    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: torch.Tensor | None = None


def make_stack(mixer, preset, faithful, n_layers=2, seed=0):
    """n_layers float64 blocks (layer_idx 0..n-1) with every parameter moved off its init."""
    torch.manual_seed(seed)
    blocks = [make_block(D_MODEL, mixer=mixer, preset=preset, window=WINDOW, d_state=4,
                         faithful=faithful, layer_idx=i, dtype=torch.float64)
              for i in range(n_layers)]
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for blk in blocks:
            for name, p in blk.named_parameters():
                if name != "A_log":
                    p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return blocks


def run_stack(blocks, h, inference_params=None):
    for blk in blocks:
        h = blk(h, inference_params=inference_params)
    return h


def sequence(B=2, L=10, seed=3):
    return torch.randn(B, L, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prompt_len", [1, 4, 10])
@pytest.mark.parametrize("mixer,preset,faithful", CASES, ids=IDS)
def test_generation_loop_equals_forward(mixer, preset, faithful, prompt_len):
    """mamba-ssm's decode loop: the prompt at seqlen_offset 0, then seqlen_offset += tokens fed."""
    blocks = make_stack(mixer, preset, faithful)
    h = sequence()
    with torch.no_grad():
        full = run_stack(blocks, h)
        params = InferenceParams(max_seqlen=h.shape[1], max_batch_size=h.shape[0])
        outs = [run_stack(blocks, h[:, :prompt_len], params)]
        params.seqlen_offset += prompt_len
        for t in range(prompt_len, h.shape[1]):
            outs.append(run_stack(blocks, h[:, t:t + 1], params))
            params.seqlen_offset += 1
    assert sorted(params.key_value_memory_dict) == [0, 1]
    assert params.key_value_memory_dict[0]["position"] == h.shape[1]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixer,preset,faithful", CASES, ids=IDS)
def test_preallocated_cache_and_chunked_continuation(mixer, preset, faithful):
    """Caches made up front (as MambaLMHeadModel.allocate_inference_cache does), a prompt of 5,
    then a chunk of 3 tokens in one call (stepped), then single tokens."""
    blocks = make_stack(mixer, preset, faithful, seed=4)
    h = sequence(L=11)
    params = InferenceParams(max_seqlen=11, max_batch_size=2)
    params.key_value_memory_dict = {blk.layer_idx: blk.allocate_inference_cache(2, 11)
                                    for blk in blocks}
    caches = dict(params.key_value_memory_dict)
    with torch.no_grad():
        full = run_stack(blocks, h)
        outs = []
        for start, stop in [(0, 5), (5, 8), (8, 9), (9, 10), (10, 11)]:
            params.seqlen_offset = start
            outs.append(run_stack(blocks, h[:, start:stop], params))
    assert all(params.key_value_memory_dict[i] is caches[i] for i in caches)  # used in place
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixer,preset,faithful", CASES, ids=IDS)
def test_step_keeps_its_position(mixer, preset, faithful):
    """step() on (B, 1, D) and on (B, D), the position from the cache or given explicitly."""
    blk = make_stack(mixer, preset, faithful, n_layers=1, seed=6)[0]
    h = sequence(L=7)
    with torch.no_grad():
        full = blk(h)
        cache = blk.allocate_inference_cache(batch_size=2, max_seqlen=7)
        assert cache["position"] == 0
        outs = []
        for t in range(7):
            if t % 3 == 0:
                out = blk.step(h[:, t:t + 1], cache)              # (B, 1, D), mamba-ssm's shape
                assert out.shape == (2, 1, D_MODEL)
                out = out[:, 0]
            elif t % 3 == 1:
                out = blk.step(h[:, t], cache)                    # (B, D)
            else:
                out = blk.step(h[:, t], cache, position=t)        # explicit, as before
            assert cache["position"] == t + 1
            outs.append(out)
    torch.testing.assert_close(torch.stack(outs, dim=1), full, rtol=1e-10, atol=1e-10)


def test_explicit_position_overrides_the_cache():
    """A position given to step() sets the modality and moves the cache's position with it."""
    blk = make_stack("conv", "v1", False, n_layers=1)[0]
    h = sequence(L=2)
    with torch.no_grad():
        a = blk.step(h[:, 0], blk.allocate_inference_cache(2), position=1)
        cache = blk.allocate_inference_cache(2)
        cache["position"] = 1
        b = blk.step(h[:, 0], cache)
        c = blk.step(h[:, 0], blk.allocate_inference_cache(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert cache["position"] == 2 and not torch.allclose(a, c)  # modality 1 vs 0


def test_protocol_errors():
    blk = MetaMambaBlock(D_MODEL, window=WINDOW, dtype=torch.float64)  # no layer_idx
    h = sequence(L=3)
    with pytest.raises(ValueError, match="layer_idx"):
        blk(h, inference_params=InferenceParams(3, 2))
    blk = make_stack("conv", "v1", False, n_layers=1)[0]
    params = InferenceParams(3, 2, key_value_memory_dict={0: blk.allocate_inference_cache(4, 3)})
    with pytest.raises(ValueError, match=r"batch 4 but hidden_states has batch 2"):
        blk(h, inference_params=params)
    with pytest.raises(ValueError, match=r"hidden_states must be one token, \(batch, 1, 8\) or"):
        blk.step(h[:, :2], blk.allocate_inference_cache(2))
