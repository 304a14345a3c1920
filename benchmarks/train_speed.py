"""Training throughput (optimizer steps/s) of DMM vs Decision Mamba (mixer "none") vs DT.

Paper shape: batch 64, K 8 for the Mamba models (L = 24 tokens), K 20 for DT, d_model 128,
3 layers; hopper-like dims (state 11, action 3). Synthetic batches (the sampler costs ~1 ms
and is the same for every model). One step = forward, masked MSE, backward, clip, AdamW.
Runs on CPU, and on CUDA too when available (bf16 autocast, as dmm train does).

    python -m benchmarks.train_speed [--steps 20] [--threads N] [--out benchmarks/results/train_speed.csv]
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import dmm_kernels
from benchmarks.csv_out import write_rows
from benchmarks.timing import median_ms
from dmm import build_model
from dmm import action_loss

MODELS = {
    "dmm-conv": {"model": "dmm", "mixer": "conv", "d_model": 128, "context_len": 8},
    "dmm-line": {"model": "dmm", "mixer": "line", "d_model": 128, "context_len": 8},
    "dmm-double-conv": {"model": "dmm", "mixer": "double-conv", "d_model": 64, "context_len": 8},
    "mamba (mixer none)": {"model": "dmm", "mixer": "none", "d_model": 128, "context_len": 8},
    "dt": {"model": "dt", "d_model": 128, "context_len": 20, "n_heads": 1},
}


def batch(B, K, S, A, device):
    mask = torch.ones(B, K, dtype=torch.bool, device=device)
    mask[: B // 4, : K // 2] = False  # some left-padded rows, like real batches
    return (torch.randn(B, K, S, device=device), torch.rand(B, K, A, device=device) * 2 - 1,
            torch.randn(B, K, 1, device=device), torch.zeros(B, K, dtype=torch.long, device=device),
            mask)


def measure(cfg, device, steps, warmup, B=64, S=11, A=3):
    torch.manual_seed(0)
    model = build_model({**cfg, "state_dim": S, "act_dim": A, "n_layers": 3}).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    s, a, r, ts, m = batch(B, cfg["context_len"], S, A, device)
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(s, a, r, timesteps=ts, attention_mask=m)
        loss = action_loss(pred, a, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    median = median_ms(step, device, steps, warmup) / 1e3
    return median, sum(p.numel() for p in model.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda if available")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_speed.csv"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    print(f"compiled kernels: {dmm_kernels.HAS_EXTENSION}; CPU threads {torch.get_num_threads()}")
    print(f"{'device':<6} {'model':<20} {'params':>9} {'ms/step':>9} {'steps/s':>9}")
    for dev in devices:
        device = torch.device(dev)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        for label, cfg in MODELS.items():
            median, n = measure(cfg, device, args.steps, args.warmup)
            rows.append({"device": dev, "device_name": name, "model": label, "params": n,
                         "batch": 64, "context_len": cfg["context_len"], "d_model": cfg["d_model"],
                         "ms_per_step": round(median * 1e3, 3), "steps_per_s": round(1 / median, 2),
                         "compiled_kernels": dmm_kernels.HAS_EXTENSION,
                         "threads": torch.get_num_threads()})
            print(f"{dev:<6} {label:<20} {n:>9,} {median * 1e3:>9.2f} {1 / median:>9.1f}")
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
