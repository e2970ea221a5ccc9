"""One look for every figure in the course.

Rules the helpers enforce: axes carry labels *with units*; sizes that span
decades go on log axes; every series says where its numbers come from — a live
measurement on the reader's GPU, or the shipped reference file (with its GPU
and date) — in its legend entry.

Typical use::

    fig, ax = plotting.figure("Copy bandwidth", xlabel="buffer size (bytes)",
                              ylabel="bandwidth (GB/s)", logx=True)
    plotting.series(ax, sizes, gbps, source=plotting.reference(prov))
    plotting.finish(ax)
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt

from . import measure

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


@dataclass(frozen=True)
class Source:
    """Where a series comes from; decides its legend suffix and line style."""

    kind: str  # "live", "reference", "datasheet" or "model"
    text: str

    @property
    def suffix(self) -> str:
        return f" [{self.kind}: {self.text}]" if self.text else f" [{self.kind}]"


def live() -> Source:
    from . import device

    return Source("live", device.gpu_name() or "CPU")


def reference(prov: dict) -> Source:
    return Source("reference", measure.label(prov))


def datasheet(text: str = "") -> Source:
    return Source("datasheet", text)


def model(text: str = "") -> Source:
    return Source("model", text)


_STYLE = {
    "live": dict(linestyle="-", marker="o", markersize=4),
    "reference": dict(linestyle="--", marker="s", markersize=4, alpha=0.85),
    "datasheet": dict(linestyle=":", marker="D", markersize=4),
    "model": dict(linestyle="-.", marker=None),
}


def figure(title: str, *, xlabel: str, ylabel: str, logx: bool = False, logy: bool = False,
           size: tuple[float, float] = (7.0, 4.2), base_x: int | None = None):
    """A figure with one axis; ``xlabel``/``ylabel`` must name the unit, e.g. ``"time (µs)"``.

    ``logx`` uses base 2 for sizes (labels mentioning bytes or size) and base 10
    otherwise, unless ``base_x`` says which.
    """
    for lab in (xlabel, ylabel):
        if "(" not in lab and "[" not in lab:
            raise ValueError(f"axis label {lab!r} has no unit: write it as 'quantity (unit)'")
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=base_x or (2 if "bytes" in xlabel or "size" in xlabel else 10))
    if logy:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.1)
    return fig, ax


def series(ax, x: Sequence[float], y: Sequence[float], *, label: str, source: Source, color=None, **kw):
    """Plot one series; the legend entry gets the source (live / reference GPU and date)."""
    style = dict(_STYLE[source.kind])
    style.update(kw)
    return ax.plot(list(x), list(y), label=label + source.suffix, color=color, **style)


def hline(ax, y: float, *, label: str, source: Source, color="gray"):
    """A ceiling (peak bandwidth, peak FLOP/s) drawn across the plot."""
    return ax.axhline(y, color=color, linestyle=":", linewidth=1.2, label=label + source.suffix)


def finish(ax, *, legend_loc: str = "best", note: str | None = None):
    """Legend, and a small note under the axes (e.g. how the timing was taken)."""
    ax.legend(loc=legend_loc, fontsize=8)
    if note:
        ax.annotate(note, xy=(0, -0.2), xycoords="axes fraction", fontsize=7, color="dimgray",
                    va="top", annotation_clip=False)
    return ax


def bytes_formatter(ax, axis: str = "x"):
    """Tick labels like 4 KiB, 1 MiB, 2 GiB on a bytes axis (``measure.format_bytes``)."""
    from matplotlib.ticker import FuncFormatter

    getattr(ax, f"{axis}axis").set_major_formatter(FuncFormatter(lambda v, _pos: measure.format_bytes(v)))
    return ax


def legend_below(ax, offset: float = -0.14, fontsize: int = 8) -> None:
    """The axes' legend centred under them (``offset`` in axes units), where it covers no data."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, offset), fontsize=fontsize)


def say(*parts: str, sep: str = " ", width: int = 100) -> None:
    """Print ``parts`` joined by ``sep``, wrapped to ``width`` characters (the chapters'
    result lines), continuation lines indented."""
    print(textwrap.fill(sep.join(parts), width, subsequent_indent="  ", break_on_hyphens=False))
