"""Command line: dmm train | eval | compare | datasets | info (entry point dmm.cli:main)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy
import torch

import dmm_kernels
from dmm import __version__
from dmm_kernels import mixers
from dmm.config import apply_overrides, available_configs, make_config, merge
from dmm.data import embedded, generate, install, load_dataset
from dmm.evaluate import evaluate_checkpoint
from dmm.export_command import add_parser as add_export_parser
from dmm.optional import MissingPackage
from dmm.train import train

EPILOG_TRAIN = """\
examples:
  dmm train                                   # DMM on the embedded Pendulum data (CPU, minutes)
  dmm train --model dt                        # the Decision Transformer baseline, same data
  dmm train --config hopper-medium            # paper settings; needs D4RL's hopper-medium-v2.hdf5
  dmm train --dataset path/to/data.hdf5 --steps 20000 model.d_model=64 train.warmup_steps=1000
  dmm train --resume runs/<run>               # continue an interrupted run exactly
  torchrun --nproc_per_node 2 -m dmm train    # data parallel (batch size is per process)

Any config value can be overridden as section.key=value (sections: data, model, train, eval);
bundled configs: {configs}.
"""


def _configs() -> str:
    return ", ".join(available_configs())


# ----------------------------------------------------------------------------- parsers
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmm", description="Decision MetaMamba: offline reinforcement learning from "
        "trajectories with multi-modal token mixers and selective state-space models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `dmm <command> --help` for the options of each command")
    sub = p.add_subparsers(dest="command", metavar="command")
    for add in SUBCOMMANDS:
        add(sub)
    return p


# One function per subcommand: its parser and its handler (set_defaults(func=...)). A new
# subcommand is a function here and its name in SUBCOMMANDS.
def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model on an offline dataset and evaluate it",
                       description="Train Decision MetaMamba (or the DT baseline) on an offline "
                       "dataset, evaluate it in Gymnasium and write a run folder (config.yaml, "
                       "metrics.csv, learning_curve.png, checkpoints/last.pt, results.json).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EPILOG_TRAIN.format(configs=_configs()))
    _add_train_args(t)
    t.add_argument("--config", help="YAML file or bundled config name (default: default.yaml, "
                   "or dt-default.yaml with --model dt)")
    t.add_argument("--model", choices=["dmm", "dt"], help="model family (default: the config's)")
    t.add_argument("--mixer", choices=mixers.MODEL_MIXERS,
                   help="DMM token mixer (none = plain Decision Mamba block)")
    t.add_argument("--batch-size", type=int, help="batch size per process")
    t.add_argument("--lr", type=float, help="peak learning rate (after warmup)")
    t.add_argument("--out", help="run folder (default: runs/<dataset>-<model>-seed<N>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (or a .pt "
                   "checkpoint) exactly where it stopped; --steps may extend it")
    t.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. model.d_model=64 train.warmup_steps=500")
    t.set_defaults(func=cmd_train)


def _add_compare(sub) -> None:
    c = sub.add_parser("compare", help="train DMM and the DT baseline on the same data and seed, "
                       "print a side-by-side table",
                       description="Train DMM (default.yaml or --config) and DT (dt-default.yaml "
                       "or --dt-config) with the same dataset, seed, steps and evaluation, in "
                       "OUT/dmm and OUT/dt, then print both scores side by side.")
    _add_train_args(c)
    c.add_argument("--config", help="DMM config (default: default.yaml)")
    c.add_argument("--dt-config", help="DT config (default: dt-default.yaml)")
    c.add_argument("--out", help="parent folder of the two runs (default: runs/compare-<time>)")
    c.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="overrides applied to both configs (e.g. train.lr=3e-4)")
    c.set_defaults(func=cmd_compare)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="re-evaluate a checkpoint",
                       description="Roll out a saved policy in Gymnasium (N episodes at once) and "
                       "report the normalized score (mean ± std over episodes and seeds). "
                       "Results go to <run>/eval-<mode>.json.")
    e.add_argument("checkpoint", help="a run folder or a .pt checkpoint")
    e.add_argument("--episodes", type=int, help="episodes per seed (default: the run's)")
    e.add_argument("--mode", choices=["window", "recurrent"],
                   help="window: re-run the last K steps each step (paper); recurrent: O(1) "
                   "per step with the whole episode as context (DMM only)")
    e.add_argument("--target-return", type=float, nargs="+", metavar="R",
                   help="return-to-go target(s) (default: the run's)")
    e.add_argument("--seeds", type=int, nargs="+", metavar="S", help="evaluation seeds")
    e.add_argument("--eval-action-pad", type=float, metavar="V",
                   help="action value of padded steps in window mode (default -10 as in "
                   "training; 0 reproduces the official evaluation code)")
    e.add_argument("--device", help="cpu | cuda | auto (default auto)", default="auto")
    e.add_argument("--out", help="results JSON path (default <run>/eval-<mode>.json)")
    e.set_defaults(func=cmd_eval)


def _add_datasets(sub) -> None:
    d = sub.add_parser("datasets", help="list embedded datasets and what the D4RL / Minari "
                       "caches hold",
                       description="List the embedded datasets (generated from Gymnasium on "
                       "first use and cached) and the datasets found in the D4RL "
                       "($D4RL_DATASET_DIR or ~/.d4rl/datasets) and Minari "
                       "($MINARI_DATASETS_PATH or ~/.minari/datasets) caches. Nothing is "
                       "downloaded.")
    d.add_argument("--prepare", action="store_true", help="generate and cache the embedded "
                   "datasets now")
    d.set_defaults(func=cmd_datasets)
    dsub = d.add_subparsers(dest="datasets_command", metavar="make")
    _add_datasets_make(dsub)
    _add_datasets_install(dsub)


def _add_datasets_make(dsub) -> None:
    dm = dsub.add_parser(
        "make", help="make MuJoCo locomotion datasets the D4RL way (SAC online, then save)",
        description="Train SAC (stable-baselines3, fixed recipe: dmm/data/generate.py) on a "
        "Gymnasium MuJoCo v5 task and write random, medium (the policy at the first evaluation "
        "reaching a third of D4RL's expert return) and medium-replay (the replay buffer up to "
        "it), and with --until expert also expert and medium-expert, as Minari datasets "
        "(through minari's DataCollector) and D4RL-layout HDF5 files. Resumable: SAC "
        "checkpoints and finished datasets are kept in the work folder "
        "($DMM_CACHE_DIR/sac/ENV-seedS, default ~/.cache/dmm/sac/...), so a later call "
        "continues. Needs: pip install 'gymnasium[mujoco]' stable-baselines3 'minari[create]'.")
    dm.add_argument("env", help="Hopper-v5 | HalfCheetah-v5 | Walker2d-v5")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--until", choices=["medium", "expert"], default="medium",
                    help="train SAC to the medium cut (default) or on to the expert")
    dm.add_argument("--kinds", nargs="+", metavar="KIND",
                    help="datasets to write: random medium medium-replay expert medium-expert "
                    "(default: the first three, all five with --until expert)")
    dm.add_argument("--steps", type=int, default=None,
                    help="steps of each random / medium / expert dataset, whole episodes "
                    "(default 1000000 as D4RL)")
    dm.add_argument("--out", help="write <out>/d4rl/*.hdf5 and the Minari store <out>/minari "
                    "(default: D4RL's and Minari's caches, where d4rl:<name> and minari:<id> "
                    "read)")
    dm.add_argument("--work", help="SAC work folder (default $DMM_CACHE_DIR/sac/ENV-seedS)")
    dm.add_argument("--no-next-observations", action="store_true",
                    help="leave next_observations out of the HDF5 files (40%% smaller)")
    dm.add_argument("--pack", action="store_true", help="also write <out>/MANIFEST.json for "
                    "the HDF5 files (what the repository ships: `dmm datasets install` makes the "
                    "Minari datasets from them)")
    dm.add_argument("--force", action="store_true", help="rewrite datasets already written")
    dm.add_argument("--max-medium-steps", type=int, default=None,
                    help="SAC steps after which to give up looking for the medium cut")
    dm.add_argument("--no-progress", action="store_true", help="no progress bars")
    dm.set_defaults(func=cmd_datasets_make)


def _add_datasets_install(dsub) -> None:
    di = dsub.add_parser(
        "install", help="install shipped datasets (e.g. datasets/hopper) into the D4RL and "
        "Minari caches", description="Check every file of DIR/MANIFEST.json (sha256) first, "
        "then copy its HDF5 files into $D4RL_DATASET_DIR (~/.d4rl/datasets) and make their "
        "Minari datasets in $MINARI_DATASETS_PATH (~/.minari/datasets; the file's steps, the "
        "last observation of each episode from a replay in the env: needs gymnasium[mujoco] and "
        "minari), so d4rl:<name> and minari:<id> find them. Each dataset goes through a staging "
        "folder and is renamed into place whole; an install cut short is named by `dmm "
        "datasets` and the loaders, and running this command again repairs it.")
    di.add_argument("dir", help="folder holding MANIFEST.json (e.g. datasets/hopper)")
    di.add_argument("--no-minari", action="store_true",
                    help="install the HDF5 files only (no gymnasium[mujoco] / minari needed)")
    di.set_defaults(func=cmd_datasets_install)


def _add_info(sub) -> None:
    i = sub.add_parser("info", help="versions, compiled kernels, CUDA",
                       description="Print package versions, whether the compiled dmm_kernels "
                       "extension is loaded, and CUDA availability.")
    i.set_defaults(func=cmd_info)


SUBCOMMANDS = (_add_train, _add_compare, _add_eval, _add_datasets, add_export_parser, _add_info)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="embedded:<name>, d4rl:<name>, minari:<id>, or a path to a "
                   "D4RL-format .hdf5 / dmm .npz file (default: embedded:pendulum-medium-replay)")
    p.add_argument("--steps", type=int, help="total training steps")
    p.add_argument("--seed", type=int, help="random seed (same seed -> same weights on CPU)")
    p.add_argument("--eval-episodes", type=int, help="evaluation episodes (0: no evaluation)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------- commands
def _flag_overrides(args) -> dict:
    """CLI flags as {section: {key: value}}, only those given."""
    pairs = {
        ("data", "dataset"): args.dataset, ("train", "steps"): args.steps,
        ("train", "seed"): args.seed, ("eval", "episodes"): args.eval_episodes,
        ("train", "eval_every"): args.eval_every, ("train", "device"): args.device,
        ("train", "batch_size"): getattr(args, "batch_size", None),
        ("train", "lr"): getattr(args, "lr", None), ("train", "out"): getattr(args, "out", None),
        ("model", "mixer"): getattr(args, "mixer", None),
    }
    out: dict = {}
    for (section, key), value in pairs.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def train_config(args) -> dict:
    """The configuration `dmm train` trains with: the named config, then flags, then overrides."""
    changes = _flag_overrides(args)
    cfg = make_config(args.config, model=args.model)
    if "mixer" in changes.get("model", {}) and cfg["model"]["model"] != "dmm":
        raise ValueError("--mixer applies to DMM only; drop it or use --model dmm")
    return apply_overrides(merge(cfg, changes), args.overrides)


def cmd_train(args) -> int:
    dmm_kernels.check_backend()
    changes = _flag_overrides(args)
    if args.resume:
        if args.config or args.model or args.mixer or args.overrides:
            raise ValueError("--resume continues the saved configuration; only --steps, "
                             "--eval-*, --device and --out may be given with it")
        train(changes, resume=args.resume, progress=not args.no_progress)
        return 0
    train(train_config(args), progress=not args.no_progress)
    return 0


def cmd_compare(args) -> int:
    dmm_kernels.check_backend()
    changes = _flag_overrides(args)
    changes.get("train", {}).pop("out", None)
    parent = Path(args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    results = {}
    for name, config in (("dmm", args.config or "default.yaml"),
                         ("dt", args.dt_config or "dt-default.yaml")):
        cfg = apply_overrides(merge(make_config(config), changes), args.overrides)
        cfg["train"]["out"] = str(parent / name)
        print(f"=== {name}: {config} -> {parent / name}")
        results[name] = train(cfg, progress=not args.no_progress)
    print(_compare_table(results))
    (parent / "compare.json").write_text(json.dumps(
        {k: {"final_eval": r.final_eval, "dataset_score": r.dataset_score,
             "elapsed_s": r.elapsed_s, "params": sum(p.numel() for p in r.model.parameters())}
         for k, r in results.items()}, indent=2, default=str))
    return 0


def _compare_table(results: dict) -> str:
    lines = [f"{'model':<6} {'params':>9} {'train s':>8} {'score':>14} {'return':>10}"]
    for name, r in results.items():
        f = r.final_eval or {}
        score = ("n/a" if f.get("score_mean") is None
                 else f"{f['score_mean']:.1f} ± {f['score_std']:.1f}")
        ret = "n/a" if not f else f"{f['return_mean']:.1f}"
        n = sum(p.numel() for p in r.model.parameters())
        lines.append(f"{name:<6} {n:>9,} {r.elapsed_s:>8.0f} {score:>14} {ret:>10}")
    ds = next(iter(results.values())).dataset_score
    if ds is not None:
        lines.append(f"dataset average normalized return: {ds:.1f}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    dmm_kernels.check_backend()
    target = None
    if args.target_return:
        target = args.target_return[0] if len(args.target_return) == 1 else args.target_return
    res = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, mode=args.mode,
                              target_return=target, seeds=args.seeds,
                              action_pad=args.eval_action_pad, device=args.device, out=args.out)
    for t in res["targets"]:
        score = ("n/a (no reference returns)" if t["score_mean"] is None
                 else f"{t['score_mean']:.1f} ± {t['score_std']:.1f}")
        print(f"target {t['target_return']:g}: normalized score {score}, return "
              f"{t['return_mean']:.1f} ± {t['return_std']:.1f} over {t['episodes']} episodes "
              f"({res['mode']} mode, seeds {res['seeds']})")
    if len(res["targets"]) > 1 and res["best_target_score"] is not None:
        print(f"max over targets (the official code's reporting): {res['best_target_score']:.1f}")
    print(f"results: {res['results_path']}")
    return 0


def cmd_datasets_make(args) -> int:
    if args.pack and not args.out:
        raise ValueError("--pack needs --out (the folder the HDF5 files and MANIFEST.json go to)")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps}: each dataset needs at least 1 step")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: seeds are >= 0")
    out = Path(args.out) if args.out else None
    kw = {}
    if args.max_medium_steps is not None:
        kw["max_medium_steps"] = args.max_medium_steps
    res = generate.make_datasets(
        args.env, seed=args.seed, until=args.until, kinds=args.kinds,
        steps=args.steps if args.steps is not None else generate.DATASET_STEPS,
        work=Path(args.work) if args.work else None,
        d4rl_dir=out / "d4rl" if out else None, minari_dir=out / "minari" if out else None,
        progress=not args.no_progress, force=args.force,
        next_observations=not args.no_next_observations, train_kwargs=kw)
    if args.pack:
        generate.pack(args.env, out, list(res))
    for kind, meta in res.items():
        b = meta["behaviour"]
        print(f"{kind:14s} {b['episodes']:6d} episodes {b['steps']:8d} steps  return "
              f"{b['return_mean']:8.1f} +- {b['return_std']:6.1f}  normalized "
              f"{b['normalized_mean']:5.1f}  d4rl: {meta['hdf5']}  minari: {meta['minari_id']}")
    return 0


def cmd_datasets_install(args) -> int:
    d4rl, minari = generate.default_out_dirs()
    made = not args.no_minari
    for name in install.install_shipped(Path(args.dir), d4rl, minari, minari=made):
        print(f"installed {name}: {d4rl}" + (f", {minari}" if made else ""))
    return 0


def cmd_datasets(args) -> int:
    names = list(embedded.DATASETS)
    print("embedded datasets (spec embedded:<name>):")
    for name in names:
        line = f"  {name}"
        if args.prepare:
            ds = load_dataset(f"embedded:{name}")
            s = ds.summary()
            line += (f"  {s['episodes']} episodes, {s['steps']:,} steps, return "
                     f"{s['return_mean']:.1f} (env {s['env_id']})")
        print(line)
    if not names:
        print("  (none found)")
    d4rl, minari = generate.default_out_dirs()
    files = sorted(d4rl.glob("*.hdf5")) if d4rl.is_dir() else []
    print(f"D4RL cache {d4rl} (spec d4rl:<name>):" + ("" if files else " nothing found"))
    for f in files:
        print(f"  {f.stem}  ({f.stat().st_size / 2**20:.0f} MiB)")
    found = sorted(str(p.parent.relative_to(minari)).removesuffix("/data")  # minari >= 0.5
                   for p in minari.rglob("metadata.json")
                   if p.parent != minari and install.STAGING not in p.parts) \
        if minari.is_dir() else []
    print(f"Minari cache {minari} (spec minari:<id>):" + ("" if found else " nothing found"))
    for f in found:
        print(f"  {f}")
    interrupted = {r["dataset"]: r for root in (d4rl, minari)
                   for r in install.interrupted_installs(root)}
    for name, record in sorted(interrupted.items()):
        print(f"interrupted install of {name}: {install.repair_hint(record)}")
    return 0


def cmd_info(args) -> int:
    print(f"dmm {__version__}  python {platform.python_version()}  torch {torch.__version__}  "
          f"numpy {numpy.__version__}")
    for mod in ("gymnasium", "mujoco", "h5py", "minari"):
        try:
            m = __import__(mod)
            print(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            print(f"{mod} not installed")
    ext = dmm_kernels.HAS_EXTENSION
    print(f"compiled dmm_kernels extension: {'loaded' if ext else 'NOT loaded (pure-PyTorch reference path, slow)'}")
    info = dmm_kernels.BUILD_INFO
    if info:
        print(f"{info['decision']}; built against torch {info['torch']}")
    if not dmm_kernels.EXTENSION_LOADED:
        print(f"  why not loaded: {dmm_kernels.EXTENSION_ERROR}")
    if dmm_kernels.BACKEND_ERROR:
        print(f"kernels in use: none; {dmm_kernels.BACKEND_ERROR}")
    else:
        print(f"kernels in use: CPU tensors -> {dmm_kernels.BACKEND['cpu']}, CUDA tensors -> "
              f"{dmm_kernels.BACKEND['cuda']}" + (f"  (DMM_KERNELS_BACKEND={os.environ['DMM_KERNELS_BACKEND']})"
                                                 if os.environ.get("DMM_KERNELS_BACKEND") else ""))
    cuda = torch.cuda.is_available()
    print(f"CUDA available: {cuda}" + (f" ({torch.cuda.device_count()} x "
                                       f"{torch.cuda.get_device_name(0)})" if cuda else ""))
    print(f"torch CUDA build: {torch.version.cuda}  CPU threads: {torch.get_num_threads()}")
    return 0


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come between or after flags ("--steps 10 model.d_model=64 --lr 1e-3"),
    # which argparse's positional handling refuses: collect the stray key=value items here.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if argv is None and len(sys.argv) <= 1 else 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, MissingPackage) as e:
        # Bad input (a value, a file, an environment switch, a missing optional package): one
        # line naming it and the fix, exit status 2; DMM_DEBUG=1 shows the traceback instead.
        if os.environ.get("DMM_DEBUG"):
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "datasets_command", None))))
        print(f"dmm {command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
