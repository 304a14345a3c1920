"""`dmm export`: a trained policy as an AOTInductor package (.pt2) plus a JSON of what a runner needs.

The package holds ONE function per environment step, with the caches as inputs it updates in place
(so the batch is dynamic and a runner owns its memory):

  act(state (B, S) normalized, rtg (B, 1), timestep (B,) int64, *caches) -> action (B, A) in [-1, 1]

  recurrent  R_t and s_t through every block's step (dmm.model.RecurrentPolicy), the action read
             at s_t, then that action fed as a_t: exactly `dmm eval --mode recurrent`, whose
             stepper also feeds the policy's own action. Caches per layer: the mixer window(s)
             and the SSM state.
  window     the paper's protocol (`dmm eval --mode window`): the last K steps are kept as
             left-padded buffers (the caches), rolled by one each call, and the model re-reads
             them. Works for the DT baseline too.

What runs the blocks inside the package (--ops): "reference", the plain torch ops of
dmm_kernels/reference.py, which the compiler fuses and which need no op library; or "dmm", the
torch.ops.dmm.* kernels, which the compiler calls as opaque ops (a C++ program then links
libdmm_ops). "auto" compiles both and keeps the faster at batch 1 on this machine, recording
both timings in the JSON: which wins depends on the kernels and the machine, so it is measured.

The runner side (observation normalization, returns-to-go, action scaling, cache reset) is
dmm/exported.py in Python and examples/cpp_policy in C++.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch._C._aoti import AOTIModelPackageLoader

import dmm_kernels
from dmm import __version__
from dmm.checkpoint import resolve_checkpoint_path
from dmm.evaluate import load_policy
from dmm.model import DecisionMetaMamba
from dmm.tokens import N_TOKEN_TYPES, PAD_ACTION
from dmm_kernels import _extension

EXPORT_FORMAT = 1
MODES = ("recurrent", "window")
OPS = ("auto", "reference", "dmm")
EXAMPLE_BATCH = 2  # batch 1 would specialise the batch dimension; it is dynamic from 1 up


# ----------------------------------------------------------------------------- the step modules
class RecurrentStep(nn.Module):
    """One environment step of the recurrent policy; caches (per layer: mixer1_cache,
    [mixer2_cache,] ssm_state, see cache_specs) updated in place."""

    def __init__(self, model: DecisionMetaMamba, max_ep_len: int):
        super().__init__()
        self.max_t = int(max_ep_len) - 1
        for blk in model.blocks:
            if N_TOKEN_TYPES % getattr(blk, "op_n_modalities", 1):
                raise ValueError(f"export: a block with {blk.op_n_modalities} modalities; the "
                                 f"exported step assumes they divide {N_TOKEN_TYPES} (R, s, a)")
        self.model = model
        self.keys = [tuple(k for k, v in blk.allocate_inference_cache(1).items()
                           if isinstance(v, torch.Tensor)) for blk in model.blocks]

    def _feed(self, token: torch.Tensor, caches: list[dict], position: int) -> torch.Tensor:
        m = self.model
        h = m.drop(m.embed_ln(token))                                     # (B, D)
        for blk, cache in zip(m.blocks, caches):
            h = blk.step(h, cache, position)
        return h

    def forward(self, state, rtg, timestep, *flat_caches):
        m, caches, i = self.model, [], 0
        for keys in self.keys:
            caches.append(dict(zip(keys, flat_caches[i:i + len(keys)])))
            i += len(keys)
        t = timestep.clamp(0, self.max_t)                                # (B,)
        # Modality = position % n_modalities with n_modalities 3 (or 1): the token type, so the
        # positions R, s, a = 0, 1, 2 serve every step.
        self._feed(m._add_time(m.embed_return(rtg), t), caches, 0)
        h = self._feed(m._add_time(m.embed_state(state), t), caches, 1)  # (B, D)
        action = torch.tanh(m.predict_action(m.ln_f(h)))                  # (B, A)
        self._feed(m._add_time(m.embed_action(action), t), caches, 2)
        return action


class WindowStep(nn.Module):
    """One environment step of the window protocol (dmm.evaluate._WindowStepper): the buffers
    states (B, K, S), actions (B, K, A), rtg (B, K, 1), timesteps (B, K) int64 updated in place."""

    def __init__(self, model: nn.Module, max_ep_len: int):
        super().__init__()
        self.model = model
        self.max_t = int(max_ep_len) - 1

    def forward(self, state, rtg, timestep, states, actions, rtgs, timesteps):
        states.copy_(torch.roll(states, -1, dims=1))
        actions.copy_(torch.roll(actions, -1, dims=1))
        rtgs.copy_(torch.roll(rtgs, -1, dims=1))
        timesteps.copy_(torch.roll(timesteps, -1, dims=1))
        states[:, -1] = state
        actions[:, -1] = 0.0  # placeholder: the model is causal, a_t never reaches s_t
        rtgs[:, -1] = rtg
        timesteps[:, -1] = timestep.clamp(0, self.max_t)
        action = self.model(states, actions, rtgs, timesteps=timesteps)[:, -1]  # (B, A)
        actions[:, -1] = action
        return action


def cache_specs(model: nn.Module, mode: str, action_pad: float = PAD_ACTION) -> list[dict]:
    """The caches in the order the package takes them: name, shape ("batch" for the dynamic
    dimension), dtype and the value a reset fills them with (window: padded steps carry zero
    states, returns-to-go and timesteps, and actions `action_pad`, the run's eval.action_pad)."""
    if mode == "window":
        K, S, A = int(model.context_len), model.state_dim, model.act_dim
        return [{"name": "states", "shape": ["batch", K, S], "dtype": "float32", "init": 0.0},
                {"name": "actions", "shape": ["batch", K, A], "dtype": "float32",
                 "init": float(action_pad)},
                {"name": "rtg", "shape": ["batch", K, 1], "dtype": "float32", "init": 0.0},
                {"name": "timesteps", "shape": ["batch", K], "dtype": "int64", "init": 0}]
    specs = []
    for i, blk in enumerate(model.blocks):
        for key, v in blk.allocate_inference_cache(1).items():
            if isinstance(v, torch.Tensor):
                specs.append({"name": f"layer{i}.{key}", "shape": ["batch", *v.shape[1:]],
                              "dtype": str(v.dtype).removeprefix("torch."), "init": 0.0})
    return specs


def zero_caches(specs: list[dict], batch: int) -> list[torch.Tensor]:
    """Fresh caches of `batch` rows at their reset values (spec "init")."""
    return [torch.full([batch if d == "batch" else d for d in s["shape"]], s["init"],
                       dtype=getattr(torch, s["dtype"])) for s in specs]


def step_module(model: nn.Module, mode: str, max_ep_len: int | None = None) -> nn.Module:
    """The step of `mode`; timesteps are clamped to max_ep_len - 1 as `dmm eval` does (its
    max_ep_len: the dataset's, default the model's)."""
    max_ep_len = int(model.max_ep_len if max_ep_len is None else max_ep_len)
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "recurrent":
        if not isinstance(model, DecisionMetaMamba):
            raise ValueError(f"--mode recurrent needs a Decision MetaMamba; this run is a "
                             f"{type(model).__name__}, which has no recurrent form: use --mode window")
        return RecurrentStep(model, max_ep_len).eval()
    return WindowStep(model, max_ep_len).eval()


def example_inputs(model: nn.Module, specs: list[dict], batch: int = EXAMPLE_BATCH) -> tuple:
    state = torch.randn(batch, model.state_dim)                          # (B, S)
    rtg = torch.randn(batch, 1)                                          # (B, 1)
    timestep = torch.arange(batch, dtype=torch.long)                     # (B,)
    return (state, rtg, timestep, *zero_caches(specs, batch))


# ----------------------------------------------------------------------------- which ops run
@contextlib.contextmanager
def cpu_ops(ops: str):
    """Trace with the dmm kernels ("dmm") or the plain torch reference ("reference") on CPU."""
    if ops == "dmm" and not dmm_kernels.HAS_EXTENSION:
        raise ValueError(f"--ops dmm: the compiled dmm ops are not loaded "
                         f"({dmm_kernels.EXTENSION_ERROR}); reinstall with `pip install .`, or "
                         "use --ops reference")
    saved = _extension.BACKEND.get("cpu")
    _extension.BACKEND["cpu"] = "reference" if ops == "reference" else saved
    try:
        yield
    finally:
        _extension.BACKEND["cpu"] = saved


def package_metadata(meta: dict) -> dict[str, str]:
    """What a C++ runner needs, as the package's own string metadata (AOTIModelPackageLoader::
    get_metadata): numbers, space-separated lists, and per cache i "dmm.cache.i" =
    "name dtype init dim1 dim2 ..." (dim 0, the batch, left out)."""
    flat = {"dmm.format": EXPORT_FORMAT, "dmm.mode": meta["mode"], "dmm.ops": meta["ops"],
            "dmm.state_dim": meta["state_dim"], "dmm.act_dim": meta["act_dim"],
            "dmm.reward_scale": repr(meta["reward_scale"]),
            "dmm.target_return": "" if meta["target_return"] is None else repr(meta["target_return"]),
            "dmm.action_scale": repr(meta["action_scale"]), "dmm.max_ep_len": meta["max_ep_len"],
            "dmm.state_mean": " ".join(map(repr, meta["state_mean"])),
            "dmm.state_std": " ".join(map(repr, meta["state_std"])),
            "dmm.n_caches": len(meta["caches"])}
    for i, c in enumerate(meta["caches"]):
        flat[f"dmm.cache.{i}"] = " ".join(map(str, [c["name"], c["dtype"], c["init"], *c["shape"][1:]]))
    return {k: str(v) for k, v in flat.items()}


def compile_package(module: nn.Module, specs: list[dict], ops: str, out: Path,
                    metadata: dict[str, str] | None = None) -> Path:
    """torch.export (batch dynamic) + AOTInductor -> the .pt2 at `out` (with `metadata`)."""
    inputs = example_inputs(module.model, specs)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dynamic = ({0: batch}, {0: batch}, {0: batch})
    caches = tuple({0: batch} for _ in specs)
    # RecurrentStep takes its caches as *args (one entry holding them all), WindowStep by name.
    dynamic += (caches,) if isinstance(module, RecurrentStep) else caches
    with cpu_ops(ops), torch.no_grad():
        ep = torch.export.export(module, inputs, dynamic_shapes=dynamic, strict=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        path = torch._inductor.aoti_compile_and_package(
            ep, package_path=str(out), inductor_configs={"aot_inductor.metadata": metadata or {}})
    return Path(path)


def package_cpu_isa(path: Path) -> str | None:
    """The instruction set the package was compiled for (AOTInductor's record): it runs on CPUs
    that have it."""
    return AOTIModelPackageLoader.load_metadata_from_package(str(path), "model").get("AOTI_CPU_ISA")


def time_package(path: Path, model: nn.Module, specs: list[dict], n: int = 300) -> float:
    """Median microseconds of one call at batch 1, one thread (after 20 warm-up calls)."""
    runner = torch._inductor.aoti_load_package(str(path))
    args = example_inputs(model, specs, batch=1)
    times, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(n + 20):
                t0 = time.perf_counter()
                runner(*args)
                if i >= 20:
                    times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times) * 1e6


# ----------------------------------------------------------------------------- export
def metadata(model: nn.Module, ckpt: dict, mode: str, ops: str, specs: list[dict],
             timings: dict | None, checkpoint: str) -> dict:
    info, ec = ckpt.get("dataset_info", {}), ckpt["config"]["eval"]
    target = ec.get("target_return")
    targets = target if isinstance(target, (list, tuple)) else [target]
    scale = float(info.get("action_scale", 1.0))
    return {
        "format": EXPORT_FORMAT, "mode": mode, "ops": ops, "needs_dmm_ops": ops == "dmm",
        "torch": torch.__version__, "dmm": __version__,
        "inputs": [{"name": "state", "shape": ["batch", model.state_dim], "dtype": "float32",
                    "what": "(observation - state_mean) / state_std"},
                   {"name": "rtg", "shape": ["batch", 1], "dtype": "float32",
                    "what": "return-to-go / reward_scale"},
                   {"name": "timestep", "shape": ["batch"], "dtype": "int64",
                    "what": "step index in the episode, from 0"}],
        "caches": specs,
        "outputs": [{"name": "action", "shape": ["batch", model.act_dim], "dtype": "float32",
                     "what": "in [-1, 1]; the environment gets action * action_scale"}],
        "state_dim": model.state_dim, "act_dim": model.act_dim,
        "state_mean": np.asarray(ckpt["state_mean"], np.float64).ravel().tolist(),
        "state_std": np.maximum(np.asarray(ckpt["state_std"], np.float64), 1e-6).ravel().tolist(),
        "reward_scale": float(ckpt["reward_scale"]),
        "target_return": None if targets[0] is None else float(targets[0]),
        "action_scale": scale, "action_low": [-scale] * model.act_dim,
        "action_high": [scale] * model.act_dim,
        "max_ep_len": int(info.get("max_ep_len", 1000)), "env_id": info.get("env_id"),
        "dataset": info.get("name"), "checkpoint": checkpoint, "checkpoint_step": ckpt.get("step"),
        "model_config": model.config, "latency_us_batch1": timings,
    }


def export_policy(checkpoint, out, mode: str = "recurrent", ops: str = "auto",
                  log=print) -> dict:
    """Export the policy of `checkpoint` (run folder or .pt) to `out` (.pt2) and out.json.
    Returns the JSON written."""
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if ops not in OPS:
        raise ValueError(f"--ops {ops!r}: expected one of {', '.join(OPS)}")
    out = Path(out)
    if out.suffix != ".pt2":
        raise ValueError(f"--out {out}: the package file must end in .pt2 (AOTInductor's format)")
    model, ckpt = load_policy(checkpoint, "cpu")
    module = step_module(model, mode, int(ckpt.get("dataset_info", {}).get("max_ep_len", 1000)))
    specs = cache_specs(model, mode, float(ckpt["config"]["eval"].get("action_pad", PAD_ACTION)))
    candidates = ["reference", "dmm"] if ops == "auto" else [ops]
    if ops == "auto" and not dmm_kernels.HAS_EXTENSION:
        candidates = ["reference"]
    meta = metadata(model, ckpt, mode, candidates[0], specs, None,
                    str(resolve_checkpoint_path(checkpoint)))
    timings, best = {}, None
    for cand in candidates:
        path = out if len(candidates) == 1 else out.with_name(f"{out.stem}.{cand}.pt2")
        log(f"exporting the {mode} step with the {cand} ops -> {path} (AOTInductor compile: "
            "about a minute)")
        meta.update(ops=cand, needs_dmm_ops=cand == "dmm")
        compile_package(module, specs, cand, path, package_metadata(meta))
        if len(candidates) > 1:
            with cpu_ops(cand):
                timings[cand] = round(time_package(path, model, specs), 1)
            log(f"  {cand}: {timings[cand]:.1f} us per call at batch 1")
            if best is None or timings[cand] < timings[best]:
                best = cand
    chosen = best or candidates[0]
    if len(candidates) > 1:
        os.replace(out.with_name(f"{out.stem}.{chosen}.pt2"), out)
        for cand in candidates:
            if cand != chosen:
                out.with_name(f"{out.stem}.{cand}.pt2").unlink(missing_ok=True)
    meta.update(ops=chosen, needs_dmm_ops=chosen == "dmm", latency_us_batch1=timings or None)
    meta["cpu_isa"] = package_cpu_isa(out)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=1))
    log(f"wrote {out} ({mode} mode, {chosen} ops) and {json_path}")
    return meta
