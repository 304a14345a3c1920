"""Run configuration: typed sections with their defaults, bundled YAML configs, `section.key=value`
overrides.

A configuration (Config) has four sections (see dmm/configs/default.yaml):
    data:  DataConfig, the dataset spec and reward_scale
    model: the kwargs of dmm.build_model ("model": "dmm" | "dt" plus the constructor's
           arguments): a mapping, because DMM and DT take different arguments
    train: TrainConfig, optimisation, logging and checkpointing (dmm.train)
    eval:  EvalConfig, the evaluation protocol (dmm.evaluate)
make_config reads a YAML file over the defaults, apply_overrides applies the command line's
changes; both give a Config. Fields read as attributes (cfg.train.lr) or, as before the config
was typed, by key (cfg["train"]["lr"]); to_dict() is the plain form saved in checkpoints and
config.yaml, and Config.of(dict) reads it back (unknown keys are an error that names them).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class _Section:
    """Key access beside attribute access (cfg["train"]["lr"] is cfg.train.lr)."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        if key not in self.keys():
            raise KeyError(f"{key!r} is not a key of this section; known keys: "
                           f"{', '.join(self.keys())}")
        setattr(self, key, value)

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]


@dataclass
class DataConfig(_Section):
    dataset: str = "embedded:pendulum-medium-replay"
    reward_scale: float | None = None   # None: the dataset's suggestion (1000 for locomotion)


@dataclass
class TrainConfig(_Section):
    steps: int = 100_000
    batch_size: int = 64                # per process
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 10_000
    lr_decay: str = "none"              # none (the paper: constant after warmup) | cosine
    lr_min_ratio: float = 0.1           # cosine: final lr = lr_min_ratio * lr
    grad_clip: float | None = None      # None: 1.0, or 0.25 for preset v2 (the authors' value)
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    amp: bool = True                    # bf16 autocast on CUDA (ignored on CPU)
    threads: int | None = None          # CPU intra-op threads; None: torch's default. Small
                                        # models run fastest with 1 (OpenMP overhead otherwise)
    log_every: int = 50
    eval_every: int = 0                 # 0: evaluate only at the end
    checkpoint_every: int = 1000
    out: str | None = None              # run folder; None: runs/<dataset>-<model>-seed<seed>-<time>


@dataclass
class EvalConfig(_Section):
    episodes: int = 10
    target_return: float | list | None = None  # number or list; None: the dataset's suggestion
    mode: str = "window"                # window (paper) | recurrent (O(1) per step, DMM only)
    action_pad: float = -10.0           # action value of padded steps; training pads with -10
    seed: int = 0


SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}  # and "model": a dict


@dataclass
class Config(_Section):
    """A run's configuration (the section order is the order config.yaml is written in)."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: dict = field(default_factory=lambda: {"model": "dmm"})

    @classmethod
    def of(cls, cfg: Config | dict) -> Config:
        """A copy of `cfg` as a Config: from a Config, or from its dict form (to_dict, a
        checkpoint's "config"); missing keys take their defaults, unknown ones are an error."""
        if isinstance(cfg, Config):
            return copy.deepcopy(cfg)
        unknown = set(cfg) - set(SECTIONS) - {"model"}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected "
                             f"data, model, train, eval")
        sections = {}
        for name, kind in SECTIONS.items():
            values = dict(cfg.get(name) or {})
            extra = set(values) - set(kind().keys())
            if extra:
                raise ValueError(f"config section {name!r} has no key(s) {sorted(extra)}; "
                                 f"known keys: {', '.join(kind().keys())}")
            sections[name] = kind(**copy.deepcopy(values))
        return cls(model=copy.deepcopy(dict(cfg.get("model") or {"model": "dmm"})), **sections)

    def to_dict(self) -> dict:
        return {"data": dict(self.data.items()), "train": copy.deepcopy(dict(self.train.items())),
                "eval": copy.deepcopy(dict(self.eval.items())), "model": copy.deepcopy(self.model)}


# The defaults as a mapping (sections other than "model" are merged over them; the model
# section comes whole from the YAML file because DMM and DT take different arguments).
DEFAULTS: dict[str, dict[str, Any]] = {k: v for k, v in Config().to_dict().items() if k != "model"}

MODEL_DEFAULT_CONFIG = {"dmm": "default.yaml", "dt": "dt-default.yaml"}

# What may change when resuming without breaking exactness (with lr_decay cosine a new
# train.steps reshapes the decay from the resumed step on).
RESUMABLE_KEYS = {"train.steps", "train.device", "train.threads", "train.log_every", "train.eval_every",
                  "train.checkpoint_every", "train.out"} | {f"eval.{k}" for k in DEFAULTS["eval"]}


# ----------------------------------------------------------------------------- configuration
def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_config_file(path_or_name: str | os.PathLike) -> dict:
    """Read a YAML config: a path, or the name of a bundled config ("hopper-medium")."""
    path = Path(path_or_name)
    if not path.exists():
        bundled = CONFIG_DIR / (path.name if path.suffix == ".yaml" else path.name + ".yaml")
        if not bundled.exists():
            raise FileNotFoundError(
                f"config {path_or_name!r} not found; pass a YAML path or one of the bundled "
                f"configs: {', '.join(available_configs())}")
        path = bundled
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must be a mapping with sections data/model/train/eval")
    return cfg


def merge(base: dict | Config, update: dict) -> dict:
    """Recursive dict merge; `update` wins (a Config is merged as its dict form)."""
    out = base.to_dict() if isinstance(base, Config) else copy.deepcopy(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_config(config: str | os.PathLike | dict | None = None, model: str | None = None
                ) -> Config:
    """DEFAULTS merged with a YAML file (or dict). `model` picks dmm / dt; when it differs from
    the file's model, the model section of that model's default config is used instead."""
    if config is None:
        config = MODEL_DEFAULT_CONFIG[model or "dmm"]
    user = read_config_file(config) if not isinstance(config, dict) else copy.deepcopy(config)
    unknown = set(user) - set(DEFAULTS) - {"model"}
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected "
                         f"data, model, train, eval")
    cfg = merge(DEFAULTS, {k: v for k, v in user.items() if k != "model"})
    cfg["model"] = copy.deepcopy(user.get("model") or {"model": "dmm"})
    cfg["model"].setdefault("model", "dmm")
    if model is not None:
        if model not in MODEL_DEFAULT_CONFIG:
            raise ValueError(f"--model must be one of {sorted(MODEL_DEFAULT_CONFIG)}, got {model!r}")
        if cfg["model"]["model"] != model:
            cfg["model"] = read_config_file(MODEL_DEFAULT_CONFIG[model])["model"]
    return Config.of(cfg)


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    # YAML 1.1 reads "1e-4" as a string; accept it as the float users mean.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(cfg: Config | dict, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply `section.key=value` overrides (value parsed as YAML). A bare `key=value` is
    accepted when exactly one section has that key."""
    cfg = cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(cfg)
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        section, name = _locate(cfg, key)
        cfg[section][name] = _parse_value(value) if isinstance(value, str) else value
    return Config.of(cfg)


def _split(override: str) -> tuple[str, str]:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like section.key=value "
                         f"(e.g. model.d_model=64 or train.lr=3e-4)")
    key, value = override.split("=", 1)
    return key.strip(), value


def _locate(cfg: dict, key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section not in cfg:
            raise ValueError(f"override {key!r}: unknown section {section!r} "
                             f"(use one of {sorted(cfg)})")
        if section != "model" and name not in cfg[section]:
            raise ValueError(f"override {key!r}: section {section!r} has no key {name!r}; "
                             f"known keys: {', '.join(sorted(cfg[section]))}")
        return section, name
    hits = [s for s in cfg if isinstance(cfg[s], dict) and key in cfg[s]]
    if len(hits) != 1:
        where = f"in sections {hits}" if hits else "in no section"
        raise ValueError(f"override {key!r} is {where}; write it as section.{key}=value")
    return hits[0], key


# Counts a run cannot start without: (section, key) -> the smallest value allowed.
MINIMA = {("train", "steps"): 1, ("train", "batch_size"): 1, ("train", "warmup_steps"): 0,
          ("train", "log_every"): 1, ("train", "eval_every"): 0, ("train", "checkpoint_every"): 1,
          ("eval", "episodes"): 0}


def check_values(cfg: Config) -> None:
    """The counts and the learning rate in range, before any data is loaded."""
    for (section, key), low in MINIMA.items():
        value = cfg[section][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{section}.{key} = {value!r}: expected an integer >= {low}")
    lr = cfg["train"]["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"train.lr = {lr!r}: expected a number > 0")


def resolve_config(cfg: Config | dict, dataset) -> Config:
    """Fill the None defaults that depend on the dataset or the model preset (a copy)."""
    cfg = Config.of(cfg)
    if cfg.data.reward_scale is None:
        cfg.data.reward_scale = float(getattr(dataset, "reward_scale", None) or 1000.0)
    if cfg.eval.target_return is None:
        target = getattr(dataset, "target_return", None)
        if target is None:
            target = float(np.max(dataset.episode_returns()))
        cfg.eval.target_return = float(target)
    if cfg.train.grad_clip is None:
        cfg.train.grad_clip = 0.25 if cfg.model.get("preset") == "v2" else 1.0
    return cfg


def check_widths(model_cfg: dict, dataset, where: str = "the config's model section") -> None:
    """The dataset's observation / action widths against those a model config fixes, if any."""
    for key, width in (("state_dim", dataset.state_dim), ("act_dim", dataset.act_dim)):
        if model_cfg.get(key) is not None and int(model_cfg[key]) != int(width):
            data = "observations" if key == "state_dim" else "actions"
            raise ValueError(f"{dataset.name}: {data} are {width} wide but {where} has "
                             f"{key} {model_cfg[key]}; train on data of that width, or leave "
                             f"model.{key} out (it is taken from the data)")


def model_config(cfg: Config, dataset) -> dict:
    """dmm.build_model's argument: the model section plus what the dataset determines."""
    check_widths(cfg["model"], dataset)
    mc = dict(cfg["model"])
    mc.update(state_dim=int(dataset.state_dim), act_dim=int(dataset.act_dim))
    mc.setdefault("max_ep_len", int(getattr(dataset, "max_ep_len", None) or 1000))
    return mc
