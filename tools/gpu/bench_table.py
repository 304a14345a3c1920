"""Side-by-side table of two bench_block.py runs: fused (first) against unfused (second)."""
import json
import sys


def main(fused_path, unfused_path):
    fused, unfused = json.load(open(fused_path)), json.load(open(unfused_path))
    print("| shape | mixer | dtype | fwd ms fused / unfused | launches | fwd+bwd ms fused / unfused | "
          "step us eager f / u | step us graph f / u | step B=1 us graph f / u | peak MiB f / u |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for f, u in zip(fused, unfused):
        us = lambda r, k: 1e3 * r[k]  # noqa: E731
        print(f"| {f['shape']} | {f['mixer']} | {f['dtype']} | {f['fwd_ms']:.3f} / {u['fwd_ms']:.3f} "
              f"({u['fwd_ms'] / f['fwd_ms']:.2f}x) | {f['fwd_launches']} / {u['fwd_launches']} | "
              f"{f['fwd_bwd_ms']:.3f} / {u['fwd_bwd_ms']:.3f} | {us(f, 'step_ms'):.1f} / {us(u, 'step_ms'):.1f} | "
              f"{us(f, 'step_graph_ms'):.1f} / {us(u, 'step_graph_ms'):.1f} | "
              f"{us(f, 'step_b1_graph_ms'):.1f} / {us(u, 'step_b1_graph_ms'):.1f} | "
              f"{f['fwd_peak_mib']:.1f} / {u['fwd_peak_mib']:.1f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
