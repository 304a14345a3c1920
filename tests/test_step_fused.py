"""The fused CPU step (csrc/cpu/step.cpp): metamamba_step's CPU kernel and metamamba_steps, a stack
of blocks in one call. Against the reference step in float64 (outputs and caches), the composite
in float32, the full-sequence block, opcheck / torch.export, and the argument checks.
"""
import os

import pytest
import torch

import dmm_kernels
from block_cases import EPS, MIXERS, make_case
from dmm_kernels import reference

pytestmark = pytest.mark.skipif(not dmm_kernels.HAS_EXTENSION, reason="compiled dmm ops not in use")

COMPOSITE = torch._C.DispatchKey.CompositeExplicitAutograd
# The emulated library (DMM_KERNELS_LIBRARY=.../libdmm_emulated.so) has no csrc/cpu: its CPU
# kernels are the emulated CUDA ones, metamamba_steps the composite over them.
FUSED_CPU = torch._C._dispatch_has_kernel_for_dispatch_key("dmm::metamamba_steps", "CPU")
requires_fused = pytest.mark.skipif(not FUSED_CPU, reason="no fused CPU kernel in this library")


def make_stack(mixer, n_modalities=3, layers=3, d_model=8, d_state=4, window=3,
               dtype=torch.float64, seed=0):
    """Parameters of `layers` blocks (each its own) and an input h (2, 7, d_model)."""
    cases = [make_case(mixer, n_modalities, d_model=d_model, d_state=d_state, window=window,
                       dtype=dtype, seed=seed + l) for l in range(layers)]
    return cases[0][0], [p for _, p in cases]


def caches_for(params, mixer, batch, dtype):
    return [dmm_kernels.allocate_step_cache(batch, p, mixer, dtype, "cpu") for p in params]


def clone_caches(caches):
    return [{k: None if v is None else v.clone() for k, v in c.items()} for c in caches]


def ref_steps(h_t, caches, params, mixer, n_modalities, residual_ssm, position):
    """The reference, layer after layer; returns (out, new caches)."""
    new = []
    for cache, p in zip(caches, params):
        h_t, cache = reference.metamamba_step_ref(h_t, cache, p, mixer, n_modalities,
                                                  residual_ssm, EPS, position)
        new.append(cache)
    return h_t, new


def op_args(h_t, caches, params, mixer, n_modalities=3, residual_ssm=False, position=0):
    return (h_t, *dmm_kernels.ops._steps_lists(caches, params, h_t.dtype), mixer, n_modalities,
            residual_ssm, EPS, position)


@pytest.mark.skipif(bool(os.environ.get("DMM_KERNELS_LIBRARY")),
                    reason="a development / emulated library, not the package's build")
def test_cpu_kernels_registered():
    for op in ("dmm::metamamba_step", "dmm::metamamba_steps"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


# ---- against the reference, float64 ------------------------------------------------------------
@pytest.mark.parametrize("residual_ssm", [False, True])
@pytest.mark.parametrize("n_modalities", [1, 3])
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("batch,window", [(1, 3), (3, 6), (2, 1)])
def test_steps_equal_reference_fp64(mixer, n_modalities, residual_ssm, batch, window):
    if mixer == "dense" and n_modalities != 1:
        pytest.skip("dense always has one modality")
    h, params = make_stack(mixer, n_modalities, window=window)
    h = h[:1].expand(batch, -1, -1) + torch.arange(batch, dtype=h.dtype)[:, None, None]
    caches = caches_for(params, mixer, batch, h.dtype)
    ref_caches = clone_caches(caches)
    ptrs = [{k: v.data_ptr() for k, v in c.items() if torch.is_tensor(v)} for c in caches]
    for t in range(h.shape[1]):
        out = dmm_kernels.metamamba_steps(h[:, t], caches, params, mixer, n_modalities,
                                          residual_ssm, EPS, position=t)
        expected, ref_caches = ref_steps(h[:, t], ref_caches, params, mixer, n_modalities,
                                         residual_ssm, t)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        for l, (cache, ref_cache) in enumerate(zip(caches, ref_caches)):
            for key, value in cache.items():
                if not torch.is_tensor(value):
                    continue
                assert value.data_ptr() == ptrs[l][key], f"layer {l} {key} not updated in place"
                torch.testing.assert_close(value, ref_cache[key], rtol=1e-12, atol=1e-12,
                                           msg=lambda m, k=key, l=l: f"layer {l} {k}: {m}")


@pytest.mark.parametrize("mixer", MIXERS)
def test_step_kernel_equals_reference_fp64(mixer):
    # metamamba_step alone (the model's per-block call) on the fused kernel.
    n_modalities = 1 if mixer == "dense" else 3
    h, params = make_case(mixer, n_modalities, batch=3, length=6, window=4)
    cache = dmm_kernels.allocate_step_cache(3, params, mixer, h.dtype, "cpu")
    ref_cache = clone_caches([cache])[0]
    for t in range(h.shape[1]):
        out = dmm_kernels.metamamba_step(h[:, t], cache, params, mixer, n_modalities, True, EPS, t)
        expected, ref_cache = reference.metamamba_step_ref(h[:, t], ref_cache, params, mixer,
                                                           n_modalities, True, EPS, t)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        for key in ("mixer1_cache", "mixer2_cache", "ssm_state"):
            if cache[key] is not None:
                torch.testing.assert_close(cache[key], ref_cache[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_stepped_stack_equals_full_sequence(mixer):
    # A sequence stepped through the stack from zero caches equals the blocks run on the whole
    # sequence, layer after layer (the training forward).
    h, params = make_stack(mixer, layers=3, d_model=16, d_state=8, window=4)
    caches = caches_for(params, mixer, h.shape[0], h.dtype)
    stepped = torch.stack([dmm_kernels.metamamba_steps(h[:, t], caches, params, mixer, 3, True,
                                                       EPS, t) for t in range(h.shape[1])], 1)
    full = h
    for p in params:
        full = dmm_kernels.metamamba_block(full, p, mixer, 3, True, EPS)
    torch.testing.assert_close(stepped, full, rtol=1e-10, atol=1e-10)


# ---- float32: the fused kernel against the composite (the op's previous CPU path) ---------------
@pytest.mark.parametrize("mixer", ["conv", "line", "double-conv", "double-line"])
def test_fp32_equals_composite_and_reference(mixer):
    h, params = make_stack(mixer, layers=2, d_model=64, d_state=16, window=6, dtype=torch.float32)
    caches = caches_for(params, mixer, 2, torch.float32)
    comp_caches = clone_caches(caches)
    ref_caches = clone_caches(caches)
    for t in range(h.shape[1]):
        out = torch.ops.dmm.metamamba_steps(*op_args(h[:, t], caches, params, mixer, position=t))
        comp = h[:, t]
        for cache, p in zip(comp_caches, params):
            comp = torch.ops.dmm.metamamba_step.default._op_dk(
                COMPOSITE, comp, cache["mixer1_cache"], cache["mixer2_cache"], cache["ssm_state"],
                *p, -torch.exp(p.A_log), mixer, 3, False, EPS, t)
        expected, ref_caches = ref_steps(h[:, t], ref_caches, params, mixer, 3, False, t)
        torch.testing.assert_close(out, comp, rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for cache, ref_cache in zip(caches, ref_caches):
        torch.testing.assert_close(cache["ssm_state"], ref_cache["ssm_state"], rtol=1e-5, atol=1e-5)


# ---- inputs the fused kernel hands to the composite --------------------------------------------
@requires_fused
def test_bfloat16_takes_the_composite():
    # bf16 activations (fp32 state) are the composite's: the same result, bit for bit.
    mixer = "double-conv"
    h, params = make_case(mixer, batch=2, length=4, d_model=8, window=3)
    hb, pb = h.to(torch.bfloat16), params.map(lambda t: t.to(torch.bfloat16))
    cache = dmm_kernels.allocate_step_cache(2, pb, mixer, torch.bfloat16, "cpu")
    comp_cache = clone_caches([cache])[0]
    for t in range(4):
        out = dmm_kernels.metamamba_steps(hb[:, t], [cache], [pb], mixer, position=t)
        comp = torch.ops.dmm.metamamba_step.default._op_dk(
            COMPOSITE, hb[:, t], comp_cache["mixer1_cache"], comp_cache["mixer2_cache"],
            comp_cache["ssm_state"], *pb, -torch.exp(pb.A_log.float()), mixer, 3, False, EPS, t)
        torch.testing.assert_close(out, comp, rtol=0, atol=0)
    torch.testing.assert_close(cache["ssm_state"], comp_cache["ssm_state"], rtol=0, atol=0)


@pytest.mark.parametrize("case", ["fp32 parameter", "strided cache", "fp32 state"])
def test_mixed_inputs_equal_reference(case):
    # float64 activations with: a float32 parameter (converted by the fused kernel), a
    # non-contiguous mixer cache or a float32 SSM state (both handed to the composite).
    mixer = "double-line"
    h, params = make_case(mixer, batch=2, length=5, d_model=8, window=3)
    cache = dmm_kernels.allocate_step_cache(2, params, mixer, h.dtype, "cpu")
    if case == "fp32 parameter":
        params = params._replace(in_proj_weight=params.in_proj_weight.float())
    elif case == "strided cache":
        cache["mixer1_cache"] = torch.zeros(2, 2, 16, dtype=h.dtype)[:, :, ::2]
        assert not cache["mixer1_cache"].is_contiguous()
    else:
        cache["ssm_state"] = cache["ssm_state"].float()
    ref_cache = clone_caches([cache])[0]
    tol = 1e-6 if case == "fp32 state" else 1e-12
    for t in range(5):
        out = dmm_kernels.metamamba_steps(h[:, t], [cache], [params], mixer, position=t)
        expected, ref_cache = reference.metamamba_step_ref(h[:, t], ref_cache, params, mixer,
                                                           position=t)
        torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    for key in ("mixer1_cache", "mixer2_cache", "ssm_state"):
        torch.testing.assert_close(cache[key], ref_cache[key], rtol=tol, atol=tol)


# ---- registration: opcheck, torch.export -------------------------------------------------------
@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_opcheck_metamamba_steps(mixer):
    h, params = make_stack(mixer, layers=2, dtype=torch.float32)
    caches = caches_for(params, mixer, 2, torch.float32)
    for c in caches:
        c["ssm_state"].normal_()
    torch.library.opcheck(torch.ops.dmm.metamamba_steps.default,
                          op_args(h[:, 0], caches, params, mixer, position=4),
                          test_utils=("test_schema", "test_faketensor"))


class _Stack(torch.nn.Module):
    """A two-layer recurrent step with its caches as buffers: what an exported policy holds."""

    def __init__(self, params, mixer):
        super().__init__()
        self.mixer, self.layers = mixer, len(params)
        for l, p in enumerate(params):
            for name, t in p.present().items():
                self.register_buffer(f"p{l}_{name}", t)
            cache = dmm_kernels.allocate_step_cache(1, p, mixer, torch.float32, "cpu")
            self.register_buffer(f"c{l}_m1", cache["mixer1_cache"])
            self.register_buffer(f"c{l}_s", cache["ssm_state"])
            self.register_buffer(f"A{l}", -torch.exp(p.A_log))
        self.present = [list(p.present()) for p in params]

    def forward(self, h_t):
        L = range(self.layers)
        fields = dmm_kernels.BlockParams._fields
        lists = [[getattr(self, f"p{l}_{f}", None) for l in L] for f in fields]
        return torch.ops.dmm.metamamba_steps(
            h_t, [getattr(self, f"c{l}_m1") for l in L], [], [getattr(self, f"c{l}_s") for l in L],
            *lists, [getattr(self, f"A{l}") for l in L], self.mixer, 3, False, EPS, 1)


def test_torch_export_metamamba_steps():
    _, params = make_stack("conv", layers=2, dtype=torch.float32)
    module = _Stack(params, "conv")
    h_t = torch.randn(1, 8)
    exported = torch.export.export(module, (h_t,))
    eager = _Stack(params, "conv")
    out = exported.module()(h_t)
    torch.testing.assert_close(out, eager(h_t), rtol=1e-6, atol=1e-6)
    assert any("metamamba_steps" in str(n.target) for n in exported.graph.nodes)


# ---- argument checks: one line naming the value and the fix ------------------------------------
def _bad_args(mixer="conv", **edit):
    h, params = make_stack(mixer, layers=2)
    caches = caches_for(params, mixer, 2, h.dtype)
    args = list(op_args(h[:, 0], caches, params, mixer))
    names = ["h_t", "mixer1_cache", "mixer2_cache", "ssm_state", *dmm_kernels.BlockParams._fields,
             "A"]
    for name, fn in edit.items():
        i = names.index(name)
        args[i] = fn(args[i])
    return args


@pytest.mark.parametrize("edit,message", [
    ({"ssm_state": lambda s: s[:1]},
     r"metamamba_steps: mixer1_cache must have one entry per layer \(1, the length of ssm_state\); got 2"),
    ({"A": lambda a: a[:1]},
     r"metamamba_steps: A must have one entry per layer \(2, the length of ssm_state\); got 1"),
    ({"mixer1_bias": lambda b: b + b},
     r"metamamba_steps: mixer1_bias must have one entry per layer \(2, the length of ssm_state\); got 4"),
    ({"mixer2_cache": lambda c: [torch.zeros(2, 2, 16, dtype=torch.float64)]},
     r"metamamba_steps: mixer2_cache must be \[\] for a single mixer; got 1 entries"),
    ({"ssm_state": lambda s: [s[0], s[1].bfloat16()]},
     r"^metamamba_steps: layer 1: ssm_state must be float32; got BFloat16"),
    ({"in_proj_weight": lambda w: [w[0], w[1][:, :4]]},
     r"metamamba_steps: layer 1: in_proj_weight must be \(2\*E, D\) = \(32, 8\); got \(32, 4\)"),
    ({"mixer1_cache": lambda c: [c[0], c[1].float()]},
     r"metamamba_steps: layer 1: mixer1_cache must have h_t's dtype Double; got Float"),
    ({"ssm_state": lambda s: []},
     r"metamamba_steps: ssm_state is empty; pass one cache per layer \(at least one\)"),
])
def test_steps_bad_input(edit, message):
    args = _bad_args(**edit)
    before = [c.clone() for c in args[3]]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.dmm.metamamba_steps(*args)
    for c, b in zip(args[3], before):  # no layer ran: the checks come before any work
        assert torch.equal(c, b)


def test_steps_bad_device_names_the_layer():
    # A cache on another device, seen by the CPU kernel: named with its layer, before any work.
    args = _bad_args()
    args[3] = [args[3][0], args[3][1].to("meta")]
    with pytest.raises(RuntimeError, match=r"metamamba_steps: layer 1: ssm_state is on meta but h "
                                           r"is on cpu; move all block parameters to h's device"):
        key = torch._C.DispatchKey.CPU if FUSED_CPU else COMPOSITE  # _op_dk: a direct kernel
        torch.ops.dmm.metamamba_steps.default._op_dk(key, *args)


def test_steps_python_wrapper_checks_layer_count():
    h, params = make_stack("conv", layers=2)
    caches = caches_for(params, "conv", 2, h.dtype)
    with pytest.raises(ValueError, match=r"metamamba_steps: need one cache per layer and at least "
                                         r"one layer; got 1 caches for 2 parameter sets"):
        dmm_kernels.metamamba_steps(h[:, 0], caches[:1], params, "conv")


# ---- the model's recurrent policy ---------------------------------------------------------------
@pytest.mark.parametrize("mixer,faithful", [("conv", False), ("line", True), ("double-line", False)])
def test_recurrent_policy_fused_equals_per_block_after_parameter_change(mixer, faithful):
    # RecurrentPolicy runs all layers in one metamamba_steps call with arguments assembled once;
    # an in-place parameter change (A_log feeds the derived A; faithful "line" derives its mixer
    # weight) must reach it as it reaches the per-block step().
    from dmm import DecisionMetaMamba
    torch.manual_seed(0)
    model = DecisionMetaMamba(5, 3, d_model=16, n_layers=3, context_len=4, window=3, dropout=0.0,
                              mixer=mixer, faithful=faithful).double().eval()
    fused, per_block = model.recurrent_policy(2), model.recurrent_policy(2)
    assert fused._config is not None
    per_block._config = None
    g = torch.Generator().manual_seed(1)
    for t in range(6):
        if t == 3:
            with torch.no_grad():
                model.blocks[1].A_log.add_(0.3)
                model.blocks[2].mixer1.weight.mul_(1.5)
        s = torch.randn(2, 5, generator=g, dtype=torch.float64)
        rtg = torch.randn(2, 1, generator=g, dtype=torch.float64)
        a = torch.rand(2, 3, generator=g, dtype=torch.float64)
        torch.testing.assert_close(fused.act(s, rtg), per_block.act(s, rtg), rtol=1e-12, atol=1e-12)
        fused.observe_action(a)
        per_block.observe_action(a)


def test_large_batch_over_threads_equals_reference_fp64():
    # Enough rows that the kernel splits the batch over threads (thread-local scratch per task).
    mixer, threads = "double-conv", torch.get_num_threads()
    h, params = make_stack(mixer, layers=2, d_model=64, d_state=16, window=6)
    h = torch.randn(64, 4, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    caches = caches_for(params, mixer, 64, h.dtype)
    ref_caches = clone_caches(caches)
    torch.set_num_threads(2)
    try:
        for t in range(h.shape[1]):
            out = dmm_kernels.metamamba_steps(h[:, t], caches, params, mixer, position=t)
            expected, ref_caches = ref_steps(h[:, t], ref_caches, params, mixer, 3, False, t)
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    finally:
        torch.set_num_threads(threads)
