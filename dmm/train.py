"""Offline training of Decision MetaMamba (or the Decision Transformer baseline).

Configuration: dmm.config (nested dict with sections data / model / train / eval).

Reproducibility: the batch and the dropout masks of step `t` on rank `r` are drawn from a
seed derived from (seed, t, r) alone, so a run resumed from a checkpoint replays exactly
the batches an uninterrupted run would have seen, and identical seeds give identical
weights on CPU. Data parallelism: launch with torchrun; every rank samples its own batches
(batch_size is per process), gradients are averaged by DDP, only rank 0 writes files and
evaluates.

Optimiser: AdamW with weight decay on matrices (Linear / mixer weights) only; biases,
LayerNorm parameters, embeddings' biases and the SSM's A_log and D are not decayed (the
mamba-ssm convention; with the paper's decay of 1e-4 the difference is negligible).
The learning rate warms up linearly over warmup_steps and then stays constant (the paper), or
with lr_decay: cosine falls to lr_min_ratio x lr by the last step (short runs end on a
settled checkpoint instead of one taken mid-oscillation).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from dmm.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dmm.config import (RESUMABLE_KEYS, Config, check_values, check_widths, model_config,
                        resolve_config)
from dmm.data import SegmentSampler, load_dataset
from dmm.evaluate import check_env, evaluate_model, normalize
from dmm.factory import build_model
from dmm.loss import action_loss
from dmm.plots import plot_learning_curve
from dmm.runtime import DistInfo, barrier, init_distributed, select_device, set_threads
from dmm_kernels import mixers


# ----------------------------------------------------------------------------- helpers
def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 63-bit seed that depends on (seed, step, rank) only."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint64)[0] >> 1)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only (see the module docstring)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        skip = (p.ndim < 2 or getattr(p, "_no_weight_decay", False)
                or leaf in ("A_log", "D") or "norm" in name.lower() or ".ln" in name)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup_steps: int, total_steps: int, decay: str = "none",
              min_ratio: float = 0.1) -> Callable[[int], float]:
    """Learning-rate multiplier at a step: linear warmup, then constant or cosine decay."""
    if decay not in ("none", "cosine"):
        raise ValueError(f"train.lr_decay must be 'none' or 'cosine', got {decay!r}")
    warmup = max(1, int(warmup_steps))
    decay_steps = max(1, int(total_steps) - warmup)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "none":
            return 1.0
        progress = min(1.0, (step - warmup) / decay_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return multiplier


def default_run_dir(cfg: Config, dataset_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in dataset_name)
    return Path("runs") / f"{safe}-{cfg.model['model']}-seed{cfg.train.seed}-{stamp}"


class _DeferredInterrupt:
    """Turns the first Ctrl-C into a flag checked between steps (so the checkpoint is taken
    at a step boundary); a second Ctrl-C interrupts immediately."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and _in_main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt received: finishing this step and saving a checkpoint "
              "(Ctrl-C again to abort immediately)", file=sys.stderr)

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------- metrics
METRIC_FIELDS = ["step", "loss", "lr", "grad_norm", "steps_per_s", "elapsed_s",
                 "eval_return", "eval_return_std", "eval_score", "eval_score_std"]


class MetricsLog:
    """metrics.csv, one row per logging or evaluation point; on resume the rows past the
    checkpoint's step (written before the interruption) are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        rows = []
        if resume_step is not None and path.exists():
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=METRIC_FIELDS).writerow(
                {k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    run_dir: Path | None
    model: torch.nn.Module
    step: int
    final_eval: dict | None = None
    dataset_score: float | None = None
    elapsed_s: float = 0.0
    interrupted: bool = False
    history: list = field(default_factory=list)


def train(config: dict, *, resume: str | os.PathLike | None = None,
          callback: Callable[[int, dict], None] | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train according to `config` (from make_config + apply_overrides), or resume the run
    folder / checkpoint `resume` (then `config` holds only the allowed changes, e.g.
    {"train": {"steps": 20000}}). `callback(step, info)` runs after every completed step
    (tests use it to interrupt). Returns a TrainResult; on Ctrl-C saves and re-raises.
    Three parts: _setup (config, data, model, optimizer, run folder), _loop (the steps, with
    logging, evaluation points, checkpoints and interrupts) and _finish (last checkpoint,
    final evaluation, results)."""
    run = _setup(config, resume, log)
    history: list = []
    _loop(run, history, callback, progress)
    return _finish(run, history)


@dataclass
class _Run:
    """What a run holds from _setup through _loop to _finish."""
    cfg: Config
    resumed: bool
    t_start: float
    log: Callable[[str], None]
    dist_info: DistInfo
    device: torch.device
    dataset: object
    state_mean: np.ndarray
    state_std: np.ndarray
    mcfg: dict
    model: torch.nn.Module
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: SegmentSampler
    run_dir: Path | None
    step: int = 0
    dataset_info: dict = field(default_factory=dict)
    dataset_score: float | None = None
    metrics: MetricsLog | None = None

    @property
    def reward_scale(self) -> float:
        return float(self.cfg.data.reward_scale)

    def checkpoint(self) -> None:
        if self.dist_info.is_main:
            save_checkpoint(self.run_dir / "checkpoints" / "last.pt", {
                "model_config": self.mcfg, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "rng": rng_state(), "state_mean": self.state_mean,
                "state_std": self.state_std, "reward_scale": self.reward_scale,
                "dataset": self.cfg.data.dataset, "dataset_info": self.dataset_info,
                "config": self.cfg.to_dict()})

    def plot(self) -> None:
        title = (f"{self.dataset.name} · {_model_name(self.model.config)} · seed "
                 f"{self.cfg.train.seed}")
        _plot(self.run_dir, title, self.dataset_score)

    def evaluate(self) -> dict | None:
        ec = self.cfg.eval
        if not self.dist_info.is_main or ec.episodes <= 0:
            return None
        return evaluate_model(self.model, self.dataset_info, state_mean=self.state_mean,
                              state_std=self.state_std, reward_scale=self.reward_scale,
                              episodes=ec.episodes, target_return=ec.target_return,
                              mode=ec.mode, action_pad=ec.action_pad, seeds=[ec.seed],
                              device=self.device)


def _run_config(config: dict, resume) -> tuple[dict, dict | None]:
    """(the config to train with, the checkpoint when resuming)."""
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = Config.of(_resume_config(ckpt["config"], config or {}))
        if cfg.train.steps < ckpt["step"]:
            raise ValueError(f"--steps {cfg.train.steps} is below the {ckpt['step']} steps "
                             f"{resume} has done; give more steps to extend the run")
    else:
        cfg = Config.of(config)
    check_values(cfg)
    return cfg, ckpt


def _setup(config: dict, resume, log) -> _Run:
    t_start = time.time()
    cfg, ckpt = _run_config(config, resume)
    tc = cfg.train
    dist_info = init_distributed(tc.device)
    device = select_device(tc.device, dist_info.local_rank)
    set_threads(tc.threads)

    dataset = load_dataset(cfg.data.dataset)
    if ckpt is None:
        cfg = resolve_config(cfg, dataset)
        tc = cfg.train
        state_mean, state_std = (np.asarray(x, dtype=np.float32) for x in dataset.state_stats())
    else:
        state_mean, state_std = np.asarray(ckpt["state_mean"]), np.asarray(ckpt["state_std"])
    # Fail now, not after hours of training: the data's widths against the model's and the env's.
    if ckpt is not None:
        check_widths(ckpt["model_config"], dataset, where=f"the model of {resume}")
    mcfg = ckpt["model_config"] if ckpt is not None else model_config(cfg, dataset)
    if cfg.eval.episodes > 0 and dist_info.is_main:
        check_env(getattr(dataset, "env_id", None), dataset.state_dim, dataset.act_dim,
                  source=dataset.name)

    model, optimizer, scheduler, step = _model_and_optimizer(tc, mcfg, ckpt, device)
    run_dir = _prepare_run_dir(cfg, dataset, resume, dist_info)
    sampler = SegmentSampler(dataset, int(mcfg.get("context_len", 20)),
                             float(cfg.data.reward_scale), state_mean, state_std,
                             seed=tc.seed)
    ddp_model = model
    if dist_info.world_size > 1:
        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(cfg, ckpt is not None, t_start, log, dist_info, device, dataset, state_mean,
               state_std, mcfg, model, ddp_model, optimizer, scheduler, sampler, run_dir, step)
    run.dataset_info = _dataset_info(dataset, cfg)
    run.dataset_score = _dataset_score(dataset, run.dataset_info)
    if dist_info.is_main:
        _write_config(run_dir, cfg, mcfg)
        run.metrics = MetricsLog(run_dir / "metrics.csv", resume_step=step if ckpt else None)
        _log_start(run)
    return run


def _model_and_optimizer(tc: dict, mcfg: dict, ckpt: dict | None, device):
    """(model, AdamW, warmup scheduler, step), restored from `ckpt` when resuming."""
    torch.manual_seed(tc.seed)  # model initialisation
    model = build_model(mcfg).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr,
                                  betas=tuple(tc.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        tc.warmup_steps, tc.steps, tc.lr_decay, tc.lr_min_ratio))
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
    return model, optimizer, scheduler, step


def _log_start(run: _Run) -> None:
    if run.resumed:
        run.log(f"resuming {run.run_dir} at step {run.step} of {run.cfg.train.steps}")
        return
    ds = run.dataset
    run.log(f"training {run.mcfg['model']} ({sum(p.numel() for p in run.model.parameters()):,} "
            f"parameters) on {ds.name}: {len(ds.episodes)} episodes, "
            f"{sum(len(e['rewards']) for e in ds.episodes):,} steps; device {run.device}; "
            f"run folder {run.run_dir}")


def _train_step(run: _Run, amp: bool):
    """One optimizer step on this step's seeded batch -> (loss, grad norm), both detached."""
    tc, device = run.cfg.train, run.device
    seed = step_seed(tc.seed, run.step, run.dist_info.rank)
    torch.manual_seed(seed)  # dropout masks of this step
    batch = run.sampler.sample(tc.batch_size, generator=torch.Generator().manual_seed(seed))
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        pred = run.ddp_model(batch["states"], batch["actions"], batch["returns_to_go"],
                             timesteps=batch["timesteps"], attention_mask=batch["mask"])
    loss = action_loss(pred, batch["actions"], batch["mask"])
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return loss.detach(), grad_norm.detach()


class _LogWindow:
    """Losses and gradient norms since the last logging point, and its time and step."""

    def __init__(self, step: int):
        self.losses, self.norms, self.t, self.step = [], [], time.time(), step

    def row(self, run: _Run) -> dict:
        now = time.time()
        row = {"step": run.step, "loss": torch.stack(self.losses).mean().item(),
               "lr": run.scheduler.get_last_lr()[0],
               "grad_norm": torch.stack(self.norms).mean().item(),
               "steps_per_s": (run.step - self.step) / max(now - self.t, 1e-9),
               "elapsed_s": now - run.t_start}
        self.losses, self.norms, self.t, self.step = [], [], now, run.step
        return row


def _loop(run: _Run, history: list, callback, progress: bool) -> None:
    """The steps up to train.steps; a Ctrl-C (or a second one) saves a checkpoint and re-raises."""
    tc = run.cfg.train
    amp = bool(tc.amp) and run.device.type == "cuda"
    total = int(tc.steps)
    bar = _progress(total, run.step, enabled=progress and run.dist_info.is_main)
    window = _LogWindow(run.step)
    run.model.train()
    with _DeferredInterrupt(enabled=run.dist_info.world_size == 1) as stop:
        try:
            while run.step < total:
                loss, grad_norm = _train_step(run, amp)
                window.losses.append(loss)
                window.norms.append(grad_norm)
                bar.update(1)
                if run.step % tc.log_every == 0 or run.step == total:
                    row = window.row(run)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    if run.metrics:
                        run.metrics.write(**row)
                    history.append(row)
                if tc.eval_every and run.step % tc.eval_every == 0 and run.step < total:
                    _eval_point(run, history, bar)
                if run.step % tc.checkpoint_every == 0:
                    run.checkpoint()
                if callback is not None:
                    callback(run.step, {"model": run.model, "optimizer": run.optimizer,
                                        "loss": loss})
                if stop.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            run.checkpoint()
            if run.dist_info.is_main:
                run.plot()
                run.log(f"interrupted at step {run.step}; checkpoint saved. Continue with: "
                        f"dmm train --resume {run.run_dir}")
            raise
    bar.close()


def _eval_point(run: _Run, history: list, bar) -> None:
    res = run.evaluate()
    if res is not None:
        row = _eval_row(run.step, res, run.t_start)
        run.metrics.write(**row)
        history.append(row)
        bar.write(f"step {run.step}: normalized score {res['score_mean']:.1f} "
                  f"± {res['score_std']:.1f}")
        run.plot()
    run.model.train()
    barrier(run.dist_info)


def _finish(run: _Run, history: list) -> TrainResult:
    """The last checkpoint, the final evaluation, results.json and the learning curve."""
    run.checkpoint()
    final = None
    if run.dist_info.is_main:
        final = run.evaluate()
        if final is not None:
            row = _eval_row(run.step, final, run.t_start)
            run.metrics.write(**row)
            history.append(row)
        elapsed = time.time() - run.t_start
        _write_results(run.run_dir, final, run.dataset_score, run.step, elapsed)
        run.plot()
        if final is not None:
            run.log(f"final normalized score: {final['score_mean']:.1f} ± "
                    f"{final['score_std']:.1f} (mean ± std over {final['episodes']} episodes, "
                    f"return {final['return_mean']:.1f}, target "
                    f"{run.cfg.eval.target_return})")
        if run.dataset_score is not None:
            run.log(f"dataset average normalized return: {run.dataset_score:.1f}")
        run.log(f"done in {elapsed:.0f} s; run folder {run.run_dir}")
    barrier(run.dist_info)
    return TrainResult(run.run_dir, run.model, run.step, final, run.dataset_score,
                       time.time() - run.t_start, False, history)


def _resume_config(saved: dict, changes: Config | dict) -> dict:
    """The saved config with the allowed `changes` (a partial mapping, or a whole Config whose
    unchanged values are no change)."""
    cfg = copy.deepcopy(saved)
    if isinstance(changes, Config):
        changes = changes.to_dict()
    for section, values in changes.items():
        for key, value in (values or {}).items():
            name = f"{section}.{key}"
            if cfg.get(section, {}).get(key) == value:
                continue
            if name not in RESUMABLE_KEYS:
                raise ValueError(f"cannot change {name} when resuming (the run would no longer "
                                 f"match an uninterrupted one); start a new run instead")
            cfg[section][key] = value
    return cfg


def _prepare_run_dir(cfg: dict, dataset, resume, dist_info: DistInfo) -> Path | None:
    if resume is not None:
        p = Path(resume)
        run_dir = p if p.is_dir() else p.parent.parent
    elif cfg.train.out:
        run_dir = Path(cfg.train.out)
        if (run_dir / "checkpoints" / "last.pt").exists():
            raise FileExistsError(f"run folder {run_dir} already holds a checkpoint; continue it "
                                  f"with --resume {run_dir} or choose another --out")
    else:
        run_dir = default_run_dir(cfg, dataset.name)
    if dist_info.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def _write_config(run_dir: Path, cfg: dict, mcfg: dict) -> None:
    with open(run_dir / "config.yaml", "w") as f:
        yaml.safe_dump(_plain(cfg.to_dict()), f, sort_keys=False)


def _plain(x):
    """numpy scalars / tuples -> YAML-safe Python values."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _dataset_info(dataset, cfg: dict) -> dict:
    """What evaluation needs about the dataset, stored in the checkpoint so `dmm eval` works
    without the data files."""
    refs = getattr(dataset, "reference_returns", None)
    return {"spec": cfg.data.dataset, "name": dataset.name,
            "env_id": getattr(dataset, "env_id", None),
            "reference_returns": None if refs is None else [float(refs[0]), float(refs[1])],
            "max_ep_len": int(getattr(dataset, "max_ep_len", None) or 1000),
            "action_scale": float(getattr(dataset, "action_scale", 1.0)),
            "target_return": cfg.eval.target_return}


def _dataset_score(dataset, info: dict) -> float | None:
    scores = normalize(info, np.asarray(dataset.episode_returns(), dtype=np.float64))
    return None if scores is None else float(np.mean(scores))


def _eval_row(step: int, res: dict, t_start: float) -> dict:
    return {"step": step, "eval_return": res["return_mean"], "eval_return_std": res["return_std"],
            "eval_score": res["score_mean"], "eval_score_std": res["score_std"],
            "elapsed_s": time.time() - t_start}


def _write_results(run_dir: Path, final: dict | None, dataset_score, step: int, elapsed: float):
    out = {"step": step, "elapsed_s": elapsed, "dataset_normalized_return": dataset_score,
           "final_eval": final}
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(_plain(out), indent=2))
    os.replace(tmp, run_dir / "results.json")


def _model_name(config: dict) -> str:
    """From a built model's config (the preset's mixer resolved)."""
    if config["model"] == "dt":
        return "Decision Transformer"
    mixer = config["mixer"]
    return "Decision Mamba (no mixer)" if mixer == mixers.NO_MIXER else f"DMM ({mixer} mixer)"


def _plot(run_dir: Path, title: str, dataset_score: float | None) -> None:
    try:
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png", title,
                            dataset_score)
    except Exception as e:  # a plotting failure must never lose a training run
        print(f"warning: could not draw the learning curve: {e}", file=sys.stderr)


def _progress(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train",
                dynamic_ncols=True, mininterval=1.0)
