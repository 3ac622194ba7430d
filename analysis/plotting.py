"""What every figure of ``analysis`` shares: matplotlib without a display, the resolution, the batch-size
colours and the log2 batch-size axis."""

from __future__ import annotations

from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

DPI = 110


def bs_colors(batch_sizes: Sequence[int]) -> dict[int, tuple]:
    """One viridis colour per batch size, small to large."""
    cmap = plt.get_cmap("viridis")
    n = max(len(batch_sizes) - 1, 1)
    return {b: cmap(0.92 * i / n) for i, b in enumerate(sorted(batch_sizes))}


def log2_axis(ax, values: Iterable[int]) -> None:
    """A log2 x axis with a tick at each batch size."""
    vals = sorted(set(int(v) for v in values))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(vals))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(v) for v in vals])
    if vals:
        ax.set_xlim(vals[0] / 1.25, vals[-1] * 1.25)
