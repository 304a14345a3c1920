"""Learning-curve PNG from a run's metrics.csv (matplotlib's Agg canvas: no display, and no
global pyplot backend switched for the importing program)."""
from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _column(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def learning_curve_figure(rows: list[dict], title: str | None = None,
                          dataset_score: float | None = None) -> Figure:
    """Training loss (left); evaluation score with its std band, against the dataset's average
    normalized return (right)."""
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax_loss, ax_eval = fig.subplots(1, 2)
    steps, loss = _column(rows, "loss")
    ax_loss.plot(steps, loss, lw=1.2)
    ax_loss.set(xlabel="step", ylabel="action MSE", title="training loss")
    if loss and min(loss) > 0:
        ax_loss.set_yscale("log")
    steps, score = _column(rows, "eval_score")
    if score:
        _, std = _column(rows, "eval_score_std")
        ax_eval.plot(steps, score, "o-", lw=1.2, label="model (mean over episodes)")
        if len(std) == len(score):
            ax_eval.fill_between(steps, [m - s for m, s in zip(score, std)],
                                 [m + s for m, s in zip(score, std)], alpha=0.2,
                                 label="± std over episodes")
    else:
        ax_eval.text(0.5, 0.5, "no evaluation yet", ha="center", va="center",
                     transform=ax_eval.transAxes)
    if dataset_score is not None:
        ax_eval.axhline(dataset_score, color="gray", ls="--", lw=1.2,
                        label=f"dataset average ({dataset_score:.1f})")
    if score or dataset_score is not None:
        ax_eval.set(ylabel="normalized score")
        ax_eval.legend(loc="best", fontsize="small")
    ax_eval.set(xlabel="step", title="evaluation")
    for ax in (ax_loss, ax_eval):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curve(metrics_csv: str | Path, out_png: str | Path, title: str | None = None,
                        dataset_score: float | None = None) -> Path:
    """learning_curve_figure of metrics_csv, written to out_png atomically."""
    metrics_csv, out_png = Path(metrics_csv), Path(out_png)
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    fig = learning_curve_figure(rows, title, dataset_score)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out_png)
    return out_png
