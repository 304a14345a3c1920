"""`dmm export` on the command line (dmm/export.py exports, dmm/exported.py checks)."""
from __future__ import annotations

from pathlib import Path

import dmm_kernels
from dmm.checkpoint import load_checkpoint
from dmm.export import MODES, OPS, export_policy
from dmm.exported import check_exported


def add_parser(sub) -> None:
    """`dmm export` on the subcommands of dmm.cli's parser."""
    x = sub.add_parser(
        "export", help="export a trained policy for deployment (AOTInductor .pt2 + JSON)",
        description="Export the policy of a run as an AOTInductor package (torch.export, batch "
        "dynamic, caches updated in place): one call per environment step, loadable from "
        "Python (torch._inductor.aoti_load_package, dmm.exported.ExportedPolicy) or C++ "
        "(examples/cpp_policy), beside a JSON with what a runner needs (state mean / std, "
        "reward scale, target return, action bounds, cache shapes and order). --check N replays "
        "N evaluation episodes through the package and through the eager model.")
    x.add_argument("run", help="a run folder or .pt checkpoint to export; or an exported .pt2 "
                   "to --check")
    x.add_argument("--out", help="the package (.pt2; default <run>/policy-<mode>.pt2); the JSON "
                   "goes beside it (.json)")
    x.add_argument("--mode", choices=MODES, help="recurrent: O(1) per step, the whole episode as "
                   "context; window: the paper's protocol, the last K steps re-read each step "
                   "(default: the run's evaluation mode, the one its score is for)")
    x.add_argument("--ops", choices=OPS, default="auto",
                   help="what runs the blocks inside the package: reference (plain torch ops, "
                   "no op library), dmm (the compiled dmm ops: a C++ program links libdmm_ops), "
                   "auto (compile both, keep the faster at batch 1; default)")
    x.add_argument("--check", type=int, metavar="N", help="then replay N evaluation episodes "
                   "through the package and through eager, and print both scores")
    x.add_argument("--seed", type=int, default=0, help="evaluation seed of --check")
    x.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    if args.check is not None and args.check < 1:
        raise ValueError(f"--check {args.check}: replay at least 1 episode")
    run = Path(args.run)
    if run.suffix == ".pt2":
        if args.check is None:
            raise ValueError(f"{run} is an exported policy: pass --check N to replay it, or a run "
                             "folder to export")
        check_exported(run, args.check, args.seed)
        return 0
    dmm_kernels.check_backend()
    ckpt = load_checkpoint(run)  # a missing or damaged checkpoint fails here, before compiling
    mode = args.mode or ckpt["config"]["eval"]["mode"]
    run_dir = run if run.is_dir() else run.parent.parent
    out = Path(args.out) if args.out else run_dir / f"policy-{mode}.pt2"
    export_policy(run, out, mode=mode, ops=args.ops)
    if args.check:
        check_exported(out, args.check, args.seed)
    return 0
