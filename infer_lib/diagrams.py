"""Labelled diagrams of the machine and of the algorithms, drawn by code.

One function per diagram, each returning a matplotlib ``Figure`` sized for the
book's column (7 inches, about 700 px wide; no text under 9 pt):

* ``sm(spec)`` — a streaming multiprocessor and its parts (chapter 1);
* ``memory_hierarchy(spec)`` — registers → shared memory/L1 → L2 → HBM → host
  DRAM and other GPUs, each level with its size and bandwidth (chapter 1);
* ``node(n_gpus, spec)`` — a multi-GPU server: NVLink/NVSwitch, PCIe, CPUs,
  DRAM, NICs (chapter 1);
* ``tiled_matmul(...)`` — how a tiled matmul walks its tiles (chapter 3);
* ``flash_attention_loop(...)`` — FlashAttention's loop over key/value tiles,
  with the causal tile map of ``experiments.attention_sweep.tile_map`` (chapter 4);
* ``prefill_decode(...)`` — prefill's one pass over a ``(B, S)`` block against decoding's
  one column per step, and what each reads from HBM (chapter 5);
* ``split_kv_decode(...)`` — split-KV decode attention: one sequence's keys cut into chunks,
  each a program writing partial results, and the combine that merges them (chapter 6).
* ``kv_head_groups(...)`` — multi-head, grouped-query and multi-query attention: which K/V head
  each query head reads, and what is cached (chapter 7).

``spec`` is a row of ``infer_lib.hardware.SPECS``, its key, or ``None`` for the
H100 SXM. Every number drawn comes from that row or from ``SM_FACTS`` /
``SHARED_MEMORY_BANKS`` below (per-architecture facts with their citation);
a figure the table leaves out (``None``) is drawn as "not given", never
guessed. Each figure's last line names its sources.

Colours mean the same in every diagram (``PALETTE``): orange is compute, blue
is memory (darker = closer to the cores), green is data movement (links,
load/store units, the TMA), purple is control (schedulers, instruction caches).

The figures come back closed (not registered with pyplot): a notebook cell
whose last expression is the figure shows it once, ``fig.savefig(path)``
writes it.

The diagrams are original: they are drawn by this code, not copied from any
vendor figure. The figures are course content and carry its licence, CC BY
4.0 (see ``LICENSE-CONTENT.md``: credit "Making transformer inference fast on
GPUs, by the course authors"); this code, like the rest of ``infer_lib``, is
under the Apache License 2.0 (``LICENSE``).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Polygon, Rectangle
from matplotlib.textpath import TextPath

from . import hardware
from .hardware import (GPUSpec, _ADA_WHITEPAPER, _AMPERE_WHITEPAPER, _HOPPER_WHITEPAPER,
                       _TURING_WHITEPAPER, _VOLTA_WHITEPAPER)

__all__ = ["PALETTE", "SM_FACTS", "SHARED_MEMORY_BANKS", "SMFacts", "sm", "memory_hierarchy",
           "node", "tiled_matmul", "grouped_pid_to_tile", "flash_attention_loop", "prefill_decode",
           "split_kv_decode", "kv_head_groups"]

#: The GPU drawn when no spec is given: the course's reference GPU.
DEFAULT_GPU = "h100_sxm"


# ----------------------------------------------------------------------------
# Per-architecture facts the spec table does not hold
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SMFacts:
    """What one SM of an architecture holds, from its whitepaper (``None``: not drawn).

    Counts are per SM; the four processing blocks (sub-partitions) share them
    equally. ``l1_smem_KB`` is the combined L1 data cache and shared memory, of
    which the spec table's ``smem_per_sm_KB`` is the most a kernel may use as
    shared memory.
    """

    chip: str
    processing_blocks: int
    fp32_per_sm: int
    int32_per_sm: int | None
    fp64_per_sm: int | None
    tensor_cores_per_sm: int
    tensor_core_generation: str
    register_file_KB: int
    l1_smem_KB: int
    tma: bool
    source: tuple[str, str]


#: compute capability → the SM of that architecture, as its whitepaper describes it
#: (its table of per-SM resources and its description of the SM's processing blocks)
SM_FACTS: dict[str, SMFacts] = {
    # Volta: four processing blocks of 16 FP32, 8 FP64 and 16 INT32 cores, two tensor
    # cores and a 64 KB register file each; 128 KB of L1 data cache + shared memory.
    "7.0": SMFacts("GV100 (Volta)", 4, 64, 64, 32, 8, "1st-generation", 256, 128, False,
                   _VOLTA_WHITEPAPER),
    # Turing: four processing blocks of 16 FP32 and 16 INT32 cores, two tensor cores and
    # a 64 KB register file each; 96 KB of L1 data cache + shared memory.
    "7.5": SMFacts("TU10x (Turing)", 4, 64, 64, None, 8, "2nd-generation", 256, 96, False,
                   _TURING_WHITEPAPER),
    # A100: 64 FP32, 64 INT32, 32 FP64 cores and 4 tensor cores per SM, a 256 KB register
    # file, 192 KB of L1 data cache + shared memory.
    "8.0": SMFacts("GA100 (Ampere)", 4, 64, 64, 32, 4, "3rd-generation", 256, 192, False,
                   _AMPERE_WHITEPAPER),
    # Ada: 128 CUDA cores (half of them also run INT32, so no separate count), 4 tensor
    # cores, a 256 KB register file and 128 KB of L1 + shared memory per SM.
    "8.9": SMFacts("AD10x (Ada Lovelace)", 4, 128, None, None, 4, "4th-generation", 256, 128,
                   False, _ADA_WHITEPAPER),
    # H100: 128 FP32, 64 INT32, 64 FP64 cores and 4 tensor cores per SM, a 256 KB register
    # file, 256 KB of L1 data cache + shared memory, and the Tensor Memory Accelerator.
    "9.0": SMFacts("GH100 (Hopper)", 4, 128, 64, 64, 4, "4th-generation", 256, 256, True,
                   _HOPPER_WHITEPAPER),
}

_CUDA_GUIDE = ("CUDA C++ Programming Guide, compute capabilities: shared memory",
               "https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#shared-memory-5-x")

#: Shared memory from compute capability 5.0 on: 32 banks, each 32 bits wide per clock.
SHARED_MEMORY_BANKS = {"banks": 32, "bytes_per_bank_per_clock": 4, "source": _CUDA_GUIDE}


# ----------------------------------------------------------------------------
# Style
# ----------------------------------------------------------------------------

#: kind → (fill, edge). Orange compute, blue memory, green data movement, purple control.
PALETTE: dict[str, tuple[str, str]] = {
    "compute": ("#fdd9b5", "#b35806"),
    "tensor": ("#fdae6b", "#b35806"),
    "control": ("#e7e1ef", "#6a51a3"),
    "registers": ("#6baed6", "#08519c"),
    "smem": ("#9ecae1", "#08519c"),
    "l2": ("#c6dbef", "#08519c"),
    "hbm": ("#deebf7", "#08519c"),
    "host": ("#eeeeee", "#525252"),
    "link": ("#c7e9c0", "#238b45"),
    "sm": ("#fafafa", "#525252"),
    "skipped": ("#ffffff", "#969696"),
}
_LINK = PALETTE["link"][1]
_MEMORY = PALETTE["hbm"][1]
_COMPUTE = PALETTE["compute"][1]
_GREY = "#525252"

#: the smallest font on any diagram, in points
MIN_FONT = 9
_FS = 9          # body text
_FS_TITLE = 11   # a figure's title
_LINE = 1.3 * _FS / 72  # one line of body text, in inches

#: the widest bandwidth any arrow is scaled to (GB/s); arrows of every GPU share the scale
_BW_SCALE = 8000.0


def _canvas(width: float, height: float):
    """A figure whose single, invisible axes has 1 data unit = 1 inch."""
    fig = plt.figure(figsize=(width, height), dpi=100)
    plt.close(fig)  # returned, not kept by pyplot: shown once in a notebook, no leak
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _add(ax, patch):
    """Add a patch without data-limit bookkeeping (the limits are fixed: 1 unit = 1 inch),
    which keeps maps of thousands of tiles fast."""
    return ax.add_artist(patch)


def _box(ax, x, y, w, h, kind, title=None, lines=(), *, fontsize=_FS, ls="-", lw=1.2,
         hatch=None, rounding=0.05, zorder=2, title_weight="bold", gid=None):
    """A rounded box of ``kind``'s colours with a bold title and plain lines, centred.

    ``gid`` names the box for the tests (matplotlib's artist id, also kept in SVG)."""
    fill, edge = PALETTE[kind]
    _add(ax, FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={rounding}",
                            facecolor=fill, edgecolor=edge, linewidth=lw, linestyle=ls,
                            hatch=hatch, zorder=zorder, gid=gid))
    rows = ([(title, title_weight)] if title else []) + [(line, "normal") for line in lines]
    lh = 1.3 * fontsize / 72
    top = y + h / 2 + (len(rows) - 1) * lh / 2
    for i, (text, weight) in enumerate(rows):
        t = ax.text(x + w / 2, top - i * lh, text, ha="center", va="center", fontsize=fontsize,
                    weight=weight, zorder=zorder + 1)
        t.diagram_box = (x, y, w, h)  # the tests check that every label fits its box


def _arrow(ax, a, b, *, color=_GREY, lw=1.5, both=False, ls="-", head=0.08, zorder=1):
    """An arrow from ``a`` to ``b`` (double-headed with ``both``); ``lw`` in points."""
    style = "<|-|>" if both else "-|>"
    hw = max(head, 0.4 * lw / 72 + 0.05)
    _add(ax, FancyArrowPatch(a, b, arrowstyle=f"{style},head_width={hw * 72 / 10:.2f},"
                             f"head_length={hw * 1.4 * 72 / 10:.2f}",
                             mutation_scale=10, color=color, lw=lw, linestyle=ls,
                             shrinkA=0, shrinkB=0, zorder=zorder))


def _bw_width(gbps: float) -> float:
    """Shaft width in inches for a bandwidth: proportional, the same scale on every GPU."""
    return 0.02 + 0.2 * gbps / _BW_SCALE


def _fat_arrow(ax, x, y0, y1, gbps, color, *, zorder=1):
    """A vertical double-headed arrow from y0 to y1 whose shaft width encodes ``gbps``."""
    sw = _bw_width(gbps)
    hw, hl = sw + 0.11, 0.09
    lo, hi = min(y0, y1), max(y0, y1)
    pts = [(x, lo), (x + hw / 2, lo + hl), (x + sw / 2, lo + hl), (x + sw / 2, hi - hl),
           (x + hw / 2, hi - hl), (x, hi), (x - hw / 2, hi - hl), (x - sw / 2, hi - hl),
           (x - sw / 2, lo + hl), (x - hw / 2, lo + hl)]
    _add(ax, Polygon(pts, closed=True, facecolor=color, edgecolor="none", zorder=zorder,
                     gid=f"bandwidth {gbps:g} GB/s"))
    return hw / 2


def _sources_sentence(spec: GPUSpec | None, *extra: tuple[str, str]) -> str:
    titles: list[str] = []
    for title, _ in (spec.sources if spec else ()) + extra:
        if title not in titles:
            titles.append(title)
    return "Sources: " + "; ".join(titles) + "."


_CAPTION_CHARS = 94


def _caption(ax, text: str, *, y: float = 0.06, chars: int = _CAPTION_CHARS) -> float:
    """The source line(s) at the bottom; returns the height they take."""
    lines = textwrap.wrap(text, chars)
    for i, line in enumerate(lines):          # in reading order, the first line highest
        ax.text(0.12, y + (len(lines) - 1 - i) * _LINE, line, ha="left", va="bottom", fontsize=_FS,
                color="#444444")
    return len(lines) * _LINE


def _legend(ax, items, *, loc, bbox, ncol):
    handles = [Patch(facecolor=PALETTE[k][0], edgecolor=PALETTE[k][1], hatch=h, label=label)
               for k, label, h in items]
    ax.legend(handles=handles, loc=loc, bbox_to_anchor=bbox, bbox_transform=ax.transData,
              ncol=ncol, fontsize=_FS, frameon=False, handlelength=1.6, columnspacing=1.2,
              handletextpad=0.5, borderaxespad=0)


def _spec(spec) -> GPUSpec:
    if spec is None:
        return hardware.SPECS[DEFAULT_GPU]
    if isinstance(spec, GPUSpec):
        return spec
    if isinstance(spec, str):
        try:
            return hardware.SPECS[spec]
        except KeyError:
            raise KeyError(f"no GPU {spec!r} in infer_lib.hardware.SPECS; keys are "
                           f"{list(hardware.SPECS)}") from None
    raise TypeError(f"spec must be a hardware.GPUSpec, a key of hardware.SPECS or None, "
                    f"got {type(spec).__name__}")


def _text_width(text: str, fontsize: float = _FS) -> float:
    """Width in inches of one line of ``text`` in the diagrams' font."""
    return TextPath((0, 0), text, size=fontsize).get_extents().width / 72


def _in_table(spec: GPUSpec) -> bool:
    """A row of the table, where None means "the chip lacks it" rather than "unknown"."""
    return hardware.SPECS.get(spec.key) == spec


def _num(v: float) -> str:
    """A table figure as printed on the diagrams: 3350, 141, 0.5 (no thousands separator)."""
    return f"{v:g}"


def _size(kb: float) -> str:
    """KB (binary, as NVIDIA quotes on-chip sizes) → '228 KB', '33 MB'."""
    if kb >= 1024:
        mb = kb / 1024
        return f"{mb:.1f} MB" if mb < 10 else f"{mb:.0f} MB"
    return f"{_num(kb)} KB"


def _arch(spec: GPUSpec) -> str:
    arch = spec.architecture or "architecture unknown"
    return f"{arch}, compute capability {spec.compute_capability}"


def _check_positive(**values):
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


# ----------------------------------------------------------------------------
# 1. The streaming multiprocessor
# ----------------------------------------------------------------------------

def _count(n: int | None, blocks: int) -> str | None:
    return None if n is None else f"×{n // blocks}"


def _per_sm(facts: SMFacts | None) -> str:
    if facts is None:
        return "unit counts per SM: not given for this architecture"
    cores = [f"{facts.fp32_per_sm} FP32"]
    cores += [f"{n} {name}" for n, name in ((facts.int32_per_sm, "INT32"),
                                            (facts.fp64_per_sm, "FP64")) if n is not None]
    return (f"per SM: {', '.join(cores)} CUDA cores, {facts.tensor_cores_per_sm} tensor cores, "
            f"{facts.register_file_KB} KB of registers")


def sm(spec=None) -> Figure:
    """One streaming multiprocessor (SM) of ``spec``'s GPU and its parts.

    Four processing blocks (sub-partitions), each with its instruction cache, warp
    scheduler and dispatch, register file, FP32/INT32/FP64 cores, tensor core,
    special-function unit and load/store units; the shared L1 data cache / shared
    memory (its usable size from the spec table); the Tensor Memory Accelerator on
    Hopper. Unit counts come from ``SM_FACTS`` (the architecture's whitepaper) and
    are left off for architectures it does not list.
    """
    spec = _spec(spec)
    facts = SM_FACTS.get(spec.compute_capability)
    blocks = facts.processing_blocks if facts else 4
    W = 7.0
    block_h, gap = 1.9, 0.14
    tma = bool(facts and facts.tma)
    # heights from the top: title, L1i, blocks, TMA, shared memory, frame, L2, legend, caption
    caption = (f"Sizes: the {spec.name} row of infer_lib.hardware.SPECS; unit counts: "
               + (f"infer_lib.diagrams.SM_FACTS (the {facts.chip} SM). " if facts else
                  f"not given for {spec.architecture or 'this GPU'}. ")
               + "Schematic, not to scale. "
               + _sources_sentence(spec, *((facts.source,) if facts else ())))
    n_caption = len(textwrap.wrap(caption, _CAPTION_CHARS))
    frame_h = 0.12 + 0.3 + 0.12 + 2 * block_h + gap + 0.12 + (0.42 if tma else 0) + 0.52 + 0.12
    below = 0.36 + 0.33 + 0.15 + 0.25 + 0.12 + n_caption * _LINE + 0.06
    H = 0.9 + frame_h + below
    fig, ax = _canvas(W, H)

    ax.text(W / 2, H - 0.2, "One streaming multiprocessor (SM)", ha="center", va="center",
            fontsize=_FS_TITLE, weight="bold")
    ax.text(W / 2, H - 0.45, f"1 of the {spec.sms} SMs of the {spec.name} ({_arch(spec)})",
            ha="center", va="center", fontsize=_FS)
    ax.text(W / 2, H - 0.45 - _LINE, _per_sm(facts), ha="center", va="center", fontsize=_FS)

    x0, x1 = 0.12, W - 0.12
    y_top = H - 0.9
    y_bot = y_top - frame_h
    _add(ax, FancyBboxPatch((x0, y_bot), x1 - x0, frame_h,
                            boxstyle="round,pad=0,rounding_size=0.1",
                            facecolor=PALETTE["sm"][0], edgecolor=PALETTE["sm"][1], lw=1.6,
                            zorder=0))
    inner_x, inner_w = x0 + 0.15, x1 - x0 - 0.3
    y = y_top - 0.12
    _box(ax, inner_x, y - 0.3, inner_w, 0.3, "control", None,
         ["L1 instruction cache (shared by the processing blocks)"])
    y -= 0.42

    bw = (inner_w - gap) / 2
    for b in range(4):
        bx = inner_x + (b % 2) * (bw + gap)
        by = y - (b // 2 + 1) * block_h - (b // 2) * gap
        _processing_block(ax, bx, by, bw, block_h, b, blocks, facts)
    y -= 2 * block_h + gap + 0.12

    if tma:
        _box(ax, inner_x, y - 0.34, inner_w, 0.34, "link", None,
             ["Tensor Memory Accelerator (TMA): asynchronous tile copies, "
              "global ↔ shared memory"])
        y -= 0.42
    smem = (f"up to {_num(spec.smem_per_sm_KB)} KB of it usable as shared memory"
            if spec.smem_per_sm_KB is not None else "shared-memory size not given")
    combined = f"{facts.l1_smem_KB} KB " if facts else ""
    _box(ax, inner_x, y - 0.52, inner_w, 0.52, "smem",
         f"{combined}L1 data cache / shared memory",
         [f"shared by the {blocks} processing blocks; {smem}"])

    # below the SM: the rest of the chip
    y = y_bot
    l2 = f"{_num(spec.l2_MB)} MB" if spec.l2_MB is not None else "size not given"
    _arrow(ax, (W / 2, y), (W / 2, y - 0.36), color=_MEMORY, lw=1.5, both=True, head=0.06)
    y -= 0.36
    _box(ax, 1.2, y - 0.33, W - 2.4, 0.33, "l2", None,
         [f"L2 cache ({l2}, shared by all {spec.sms} SMs), then HBM"])
    y -= 0.33 + 0.15
    _legend(ax, [("compute", "compute", None), ("registers", "memory", None),
                 ("link", "data movement", None), ("control", "control", None)],
            loc="upper center", bbox=(W / 2, y), ncol=4)
    _caption(ax, caption)
    return fig


def _processing_block(ax, bx, by, bw, bh, b, blocks, facts):
    _add(ax, FancyBboxPatch((bx, by), bw, bh, boxstyle="round,pad=0,rounding_size=0.06",
                            facecolor="white", edgecolor=_GREY, lw=1.0, zorder=1))
    ax.text(bx + bw / 2, by + bh - 0.16, f"processing block {b + 1} of {blocks}",
            ha="center", va="center", fontsize=_FS, weight="bold")
    pad = 0.08
    x, w = bx + pad, bw - 2 * pad
    y = by + bh - 0.32
    _box(ax, x, y - 0.27, w * 0.35, 0.27, "control", None, ["L0 i-cache"])
    _box(ax, x + w * 0.37, y - 0.27, w * 0.63, 0.27, "control", None,
         ["warp scheduler + dispatch"])
    y -= 0.33
    if facts:
        kb = facts.register_file_KB // blocks
        regs = [f"register file: {kb} KB ({kb * 1024 // 4:,} × 32-bit)"]
    else:
        regs = ["register file"]
    _box(ax, x, y - 0.27, w, 0.27, "registers", None, regs)
    y -= 0.33
    f = facts
    units = [("compute", "FP32", _count(f and f.fp32_per_sm, blocks)),
             ("compute", "INT32", _count(f and f.int32_per_sm, blocks)),
             ("compute", "FP64", _count(f and f.fp64_per_sm, blocks)),
             ("tensor", "tensor core",
              f"×{f.tensor_cores_per_sm // blocks} ({f.tensor_core_generation[:3]} gen)"
              if f else None)]
    fracs = (0.2, 0.2, 0.2, 0.4)
    g = 0.03 * w
    ux = x
    for (kind, name, sub), frac in zip(units, fracs):
        uw = frac * (w - 3 * g)
        _box(ax, ux, y - 0.42, uw, 0.42, kind, None, [name] + ([sub] if sub else []))
        ux += uw + g
    y -= 0.48
    _box(ax, x, y - 0.38, w * 0.6, 0.38, "compute", None,
         ["special-function unit (SFU)", "exp2, sin, cos, rsqrt, rcp…"])
    _box(ax, x + w * 0.62, y - 0.38, w * 0.38, 0.38, "link", None,
         ["load/store units", "(LD/ST)"])


# ----------------------------------------------------------------------------
# 2. The memory hierarchy
# ----------------------------------------------------------------------------

def _cap_width(nbytes: float | None, lo=2.0**16, hi=2.0**41, w_min=1.3, w_max=3.8) -> float:
    """Box width for a capacity: linear in log(bytes), 64 KiB → w_min, 2 TiB → w_max."""
    if nbytes is None:
        return w_min
    t = (math.log2(nbytes) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    return w_min + (w_max - w_min) * min(max(t, 0.0), 1.0)


def memory_hierarchy(spec=None) -> Figure:
    """Registers → shared memory/L1 → L2 → HBM → host DRAM (PCIe) and other GPUs (NVLink).

    Each level with its size, each link with its bandwidth, for ``spec``'s GPU
    (default: the H100 SXM). Sizes and GB/s come from the spec table; the register
    file and the L1 + shared total from ``SM_FACTS``, the shared-memory banks from
    ``SHARED_MEMORY_BANKS``. Box width grows with log(capacity) and arrow width with
    bandwidth (the same scale for every GPU); a figure the table does not give is
    written as such, and its arrow drawn grey and dashed.
    """
    spec = _spec(spec)
    facts = SM_FACTS.get(spec.compute_capability)
    sms = spec.sms
    W, cx = 7.0, 2.55
    row_h, gap = 0.42, 0.52
    caption = (f"Sizes and GB/s: the {spec.name} row of infer_lib.hardware.SPECS; registers "
               "and L1 + shared: infer_lib.diagrams.SM_FACTS; banks: SHARED_MEMORY_BANKS. NVLink "
               "and PCIe count both directions, as NVIDIA quotes them. "
               + _sources_sentence(spec, *((facts.source,) if facts else ()), _CUDA_GUIDE))
    n_caption = len(textwrap.wrap(caption, _CAPTION_CHARS))
    last_h = 0.5  # the off-GPU row
    H = 0.85 + 4 * row_h + last_h + 4 * gap + 0.3 + n_caption * _LINE + 0.12
    fig, ax = _canvas(W, H)
    ax.text(W / 2, H - 0.2, f"The memory hierarchy of the {spec.name}", ha="center",
            va="center", fontsize=_FS_TITLE, weight="bold")
    ax.text(W / 2, H - 0.45, "box width grows with log(capacity), arrow width with bandwidth "
            "(grey: no GB/s figure)", ha="center", va="center", fontsize=_FS, color="#444444")

    def row_y(i):  # bottom of row i, rows numbered from the top
        return H - 0.85 - (i + 1) * row_h - i * gap

    def right(i, lines):
        y = row_y(i) + row_h / 2 + (len(lines) - 1) * _LINE / 2
        for k, line in enumerate(lines):
            ax.text(4.6, y - k * _LINE, line, ha="left", va="center", fontsize=_FS)

    def level(i, nbytes, kind, title, lines=(), x_center=cx, width=None, height=row_h):
        w = width if width is not None else _cap_width(nbytes)
        unknown = nbytes is None and width is None  # dashed: its size is not given
        _box(ax, x_center - w / 2, row_y(i) + row_h - height, w, height, kind, title, lines,
             ls="--" if unknown else "-", gid=f"level {title}")

    def link(i, gbps, text, *, x=cx, color=_MEMORY, dx=0.2):
        """The arrow between row i and row i + 1 (grey and dashed without ``gbps``), labelled."""
        y0, y1 = row_y(i), row_y(i) - gap
        if gbps is not None:
            half = _fat_arrow(ax, x, y1, y0, gbps, color)
        else:
            _arrow(ax, (x, y1), (x, y0), color="#969696", lw=1.5, both=True, ls="--", head=0.07)
            half = 0.05
        lines = text if isinstance(text, list) else [text]
        ym = (y0 + y1) / 2 + (len(lines) - 1) * _LINE / 2
        for k, line in enumerate(lines):
            ax.text(x + half + dx, ym - k * _LINE, line, ha="left", va="center", fontsize=_FS)

    # 0. registers
    rf = facts.register_file_KB if facts else None
    level(0, rf * 1024 if rf else None, "registers", "registers")
    right(0, [f"{rf} KB per SM", f"{_size(rf * sms)} on all {sms} SMs"] if rf
          else ["size: not given", "(no cited figure for this architecture)"])
    banks = SHARED_MEMORY_BANKS
    per_clock = banks["banks"] * banks["bytes_per_bank_per_clock"]
    link(0, None, [f"shared memory: {banks['banks']} banks × {banks['bytes_per_bank_per_clock']} B"
                   f" = {per_clock} B per clock per SM", "(no GB/s: the table has no clock)"])
    # 1. shared memory / L1
    smem = spec.smem_per_sm_KB
    level(1, smem * 1024 if smem else None, "smem", "shared memory", ["+ L1 cache"])
    if smem is not None:
        of = [f"(of {facts.l1_smem_KB} KB L1 + shared)"] if facts else []
        right(1, [f"{_num(smem)} KB per SM"] + of + [f"{_size(smem * sms)} on all {sms} SMs"])
    else:
        right(1, ["size: not given"])
    link(1, None, "L2 ↔ SMs: bandwidth not in the spec table")
    # 2. L2
    l2 = spec.l2_MB
    level(2, l2 * 2**20 if l2 else None, "l2", "L2 cache")
    right(2, [f"{_num(l2)} MB" if l2 is not None else "size: not given",
              f"shared by all {sms} SMs"])
    bw = spec.bandwidth_GBps
    mem = spec.memory_type or "device memory"
    link(2, bw, f"{_num(bw)} GB/s ({mem})" if bw is not None else "bandwidth: not given")
    # 3. HBM (or GDDR)
    level(3, spec.memory_bytes, "hbm", mem, ["(GPU memory)"])      # GiB, as NVIDIA's GB
    right(3, [f"{_num(spec.memory_GB)} GB {spec.memory_type or ''}".rstrip(),
              "next to the GPU die" if (spec.memory_type or "").startswith("HBM")
              else "on the GPU board"])
    # 4. off the GPU: host DRAM over PCIe, other GPUs over NVLink
    xl, xr = cx - 1.05, cx + 1.05
    y0, y1 = row_y(3), row_y(3) - gap
    for x, gbps, name in ((xl, spec.pcie_GBps, "PCIe"), (xr, spec.nvlink_GBps, "NVLink")):
        if gbps is not None:
            link(3, gbps, [f"{name}: {_num(gbps)} GB/s", "(both directions)"], x=x, color=_LINK,
                 dx=0.08)
        elif name == "NVLink":
            ax.text(x, (y0 + y1) / 2, "no NVLink on this GPU" if _in_table(spec)
                    else "NVLink: not given", ha="center", va="center", fontsize=_FS)
        else:
            link(3, None, [f"{name}: bandwidth", "not given"], x=x, dx=0.08)
    level(4, None, "host", "host DRAM", ["(CPU memory)"], x_center=xl, width=1.8, height=last_h)
    level(4, None, "hbm" if spec.nvlink_GBps else "host", "other GPUs",
          ["(their memory)"], x_center=xr, width=1.8, height=last_h)
    right(4, ["host DRAM: its size depends on", "the server (not in the table)"])

    # where each level lives
    for top, bottom, text in ((0, 1, "on each SM"), (2, 3, "on the GPU"), (4, 4, "outside")):
        ya, yb = row_y(top) + row_h, row_y(bottom) + (row_h - last_h if bottom == 4 else 0)
        ax.plot([0.32, 0.25, 0.25, 0.32], [ya, ya, yb, yb], color=_GREY, lw=1.0)
        ax.text(0.14, (ya + yb) / 2, text, rotation=90, ha="center", va="center", fontsize=_FS)
    _caption(ax, caption)
    return fig


# ----------------------------------------------------------------------------
# 3. A node of several GPUs
# ----------------------------------------------------------------------------

def node(n_gpus: int = 8, spec=None) -> Figure:
    """A server with ``n_gpus`` GPUs of ``spec``'s kind (default: eight H100 SXM).

    GPUs reach each other over NVLink — through NVSwitch chips on SXM boards from
    the A100 on, through bridges between pairs of PCIe cards — and the CPUs over
    PCIe; the CPUs have their DRAM and the NICs lead to other nodes. Bandwidths
    per GPU from the spec table. The wiring of PCIe switches and NICs differs from
    server to server: this is a schematic. ``n_gpus`` runs from 1 to 16.
    """
    _check_positive(n_gpus=n_gpus)
    if n_gpus > 16:
        raise ValueError(f"n_gpus must be at most 16 to stay readable, got {n_gpus}")
    spec = _spec(spec)
    W = 7.0
    n_cpu = 2 if n_gpus >= 2 else 1
    nvlink = spec.nvlink_GBps if n_gpus >= 2 else None
    bridge = nvlink is not None and spec.form_factor == "PCIe"
    switch = nvlink is not None and not bridge
    caption = (f"Bandwidths per GPU: the {spec.name} row of infer_lib.hardware.SPECS, both "
               "directions together, as NVIDIA quotes them. A schematic: PCIe switches, the "
               "number of NICs and how they attach differ from server to server. "
               + _sources_sentence(spec))
    n_caption = len(textwrap.wrap(caption, _CAPTION_CHARS))
    H = 5.0 + n_caption * _LINE
    fig, ax = _canvas(W, H)
    ax.text(W / 2, H - 0.2, f"A node of {n_gpus} × {spec.name}", ha="center", va="center",
            fontsize=_FS_TITLE, weight="bold")
    mem = f"{_num(spec.memory_GB)} GB {spec.memory_type or ''}".rstrip()
    bw = f" at {_num(spec.bandwidth_GBps)} GB/s" if spec.bandwidth_GBps is not None else ""
    ax.text(W / 2, H - 0.45, f"each GPU: {spec.sms} SMs, {mem}{bw}", ha="center", va="center",
            fontsize=_FS)

    # the GPUs, in one row
    margin, g = 0.35, 0.1
    gw = min(0.78, (W - 2 * margin - (n_gpus - 1) * g) / n_gpus)
    row_w = n_gpus * gw + (n_gpus - 1) * g
    gx0 = (W - row_w) / 2
    gy, gh = H - 2.05, 0.55
    centers = [gx0 + i * (gw + g) + gw / 2 for i in range(n_gpus)]
    for i, c in enumerate(centers):
        if gw >= 0.55:
            _box(ax, c - gw / 2, gy, gw, gh, "compute", f"GPU {i}",
                 [f"{_num(spec.memory_GB)} GB"], gid=f"GPU {i}")
        else:  # too narrow for words: the legend says these are GPUs
            _box(ax, c - gw / 2, gy, gw, gh, "compute", f"{i}", gid=f"GPU {i}")

    # GPU ↔ GPU
    fab_y, fab_h = H - 1.2, 0.42
    if switch:
        nvs = "NVSwitch" if spec.capability >= (8, 0) else "NVLink"
        what = "any GPU to any other" if nvs == "NVSwitch" else "GPU to GPU"
        fab_w = max(row_w, 4.6)
        _box(ax, (W - fab_w) / 2, fab_y, fab_w, fab_h, "link", f"{nvs}: {what}",
             [f"NVLink: {_num(nvlink)} GB/s per GPU (both directions)"])
        for c in centers:
            _fat_arrow(ax, c, gy + gh, fab_y, nvlink, _LINK)
    elif bridge:
        for a in range(0, n_gpus - 1, 2):
            xa, xb = centers[a], centers[a + 1]
            ax.plot([xa, xa, xb, xb], [gy + gh, gy + gh + 0.25, gy + gh + 0.25, gy + gh],
                    color=_LINK, lw=3)
        ax.text(W / 2, fab_y + fab_h / 2, "NVLink bridges between pairs of cards: "
                f"{_num(nvlink)} GB/s per GPU (both directions)", ha="center", va="center",
                fontsize=_FS)
    else:
        why = ("one GPU: no GPU-to-GPU link" if n_gpus == 1 else
               f"no NVLink on the {spec.name}: GPUs exchange data over PCIe" if _in_table(spec)
               else "NVLink: not given for this GPU")
        ax.text(W / 2, fab_y + fab_h / 2, why, ha="center", va="center", fontsize=_FS)

    # GPU ↔ switch ↔ CPU over PCIe; each CPU with its DRAM and a NIC
    pcie = spec.pcie_GBps
    base = 0.12 + n_caption * _LINE + 0.35     # above the caption and the legend
    cpu_y, box_h = base + 0.45, 0.5              # the row of DRAM, CPU, NIC
    sw_y, sw_h = cpu_y + box_h + 0.35, 0.3       # the PCIe switches
    per_cpu = math.ceil(n_gpus / n_cpu)
    dram_w, cpu_w, nic_w, g2 = 0.85, 0.9, 1.05, 0.15
    row_w2 = dram_w + cpu_w + nic_w + 2 * g2
    cpu_centers = []
    for k in range(n_cpu):
        group = centers[k * per_cpu:(k + 1) * per_cpu]
        # the bottom row: DRAM | CPU | NIC on the left half, mirrored on the right
        if n_cpu == 1:
            x = (W - row_w2) / 2
        else:
            x = W / 2 - 0.2 - row_w2 if k == 0 else W / 2 + 0.2
        order = ("dram", "cpu", "nic") if k == 0 else ("nic", "cpu", "dram")
        pos = {}
        for part in order:
            w = {"dram": dram_w, "cpu": cpu_w, "nic": nic_w}[part]
            pos[part] = (x, w)
            x += w + g2
        (dx, dw), (cx_, cw), (nx, nw) = pos["dram"], pos["cpu"], pos["nic"]
        _box(ax, cx_, cpu_y, cw, box_h, "host", f"CPU {k}")
        _box(ax, dx, cpu_y, dw, box_h, "host", "DRAM", ["(host)"])
        _box(ax, nx, cpu_y, nw, box_h, "link", "NIC", ["to other nodes"])
        ax.plot([min(dx + dw, cx_ + cw), max(dx, cx_)], [cpu_y + box_h / 2] * 2,
                color=_MEMORY, lw=3)  # the memory channels
        cpu_centers.append(cx_ + cw / 2)
        # the PCIe switch above, spanning its GPUs, the CPU and the NIC
        xs = list(group) + [cx_ + cw / 2, nx + nw / 2]
        s0, s1 = min(xs) - 0.15, max(xs) + 0.15
        _box(ax, s0, sw_y, s1 - s0, sw_h, "link", None, ["PCIe switch"])
        for c in group:  # each GPU's own PCIe link
            if pcie is not None:
                _fat_arrow(ax, c, gy, sw_y + sw_h, pcie, _LINK)
            else:
                ax.plot([c, c], [gy, sw_y + sw_h], color="#969696", lw=1.5, ls="--")
        for c in (cx_ + cw / 2, nx + nw / 2):
            ax.plot([c, c], [sw_y, cpu_y + box_h], color=_LINK, lw=2.5)
    if n_cpu == 2:
        ya = cpu_y - 0.18
        ax.plot([cpu_centers[0], cpu_centers[0], cpu_centers[1], cpu_centers[1]],
                [cpu_y, ya, ya, cpu_y], color=_GREY, lw=2)
        ax.text(W / 2, ya - 0.12, "CPU–CPU link", ha="center", va="center", fontsize=_FS)
    label = (f"PCIe: {_num(pcie)} GB/s per GPU (both directions)" if pcie is not None
             else "PCIe: bandwidth not given")
    ax.text(W / 2, (gy + sw_y + sw_h) / 2, label, ha="center", va="center", fontsize=_FS,
            bbox=dict(facecolor="white", edgecolor="none", pad=1.5), zorder=4)
    _legend(ax, [("compute", "GPU", None), ("link", "links: NVLink, PCIe, network", None),
                 ("host", "host: CPU, DRAM", None)],
            loc="upper center", bbox=(W / 2, base - 0.02), ncol=3)
    _caption(ax, caption)
    return fig


# ----------------------------------------------------------------------------
# 4. The tiled matmul
# ----------------------------------------------------------------------------

def grouped_pid_to_tile(pid: int, M: int, N: int, BLOCK_M: int, BLOCK_N: int,
                        GROUP_M: int) -> tuple[int, int]:
    """The output tile ``(pid_m, pid_n)`` that program ``pid`` computes in the grouped
    ordering of ``infer_lib.kernels.matmul_kernel`` (the same arithmetic as the kernel)."""
    num_pid_m, num_pid_n = -(-M // BLOCK_M), -(-N // BLOCK_N)
    group_m = min(num_pid_m, GROUP_M)
    num_pid_in_group = group_m * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * group_m
    group_size_m = min(num_pid_m - first_pid_m, group_m)
    return (first_pid_m + ((pid % num_pid_in_group) % group_size_m),
            (pid % num_pid_in_group) // group_size_m)


def tiled_matmul(M: int = 512, N: int = 768, K: int = 384, BLOCK_M: int = 128,
                 BLOCK_N: int = 128, BLOCK_K: int = 64, *, GROUP_M: int = 2, pid: int = 5,
                 k_step: int = 2, show_pids: bool = True) -> Figure:
    """How a tiled matmul ``C = A · B`` walks its tiles.

    ``A`` is ``M × K``, ``B`` is ``K × N``, ``C`` is ``M × N``, drawn to scale (a side
    too short to read is stretched, and the caption says so). Program ``pid`` owns one
    ``BLOCK_M × BLOCK_N`` tile of C (found with the kernel's grouped ordering,
    ``GROUP_M``); it reads the strip of A to its left and the strip of B above it,
    one ``BLOCK_K`` slab of each per step, through shared memory (the slabs of step
    ``k_step`` are highlighted, the earlier ones hatched), and accumulates into a tile
    held in registers, written to C once at the end. With ``show_pids`` every tile of
    C shows the program id that computes it. Sizes need not be multiples of the
    blocks: the last tiles are ragged, as in the kernel.
    """
    _check_positive(M=M, N=N, K=K, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                    GROUP_M=GROUP_M)
    n_m, n_n, n_k = -(-M // BLOCK_M), -(-N // BLOCK_N), -(-K // BLOCK_K)
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < n_m * n_n:
        raise ValueError(f"pid must be an integer in [0, {n_m * n_n}) (the grid has "
                         f"{n_m} × {n_n} tiles), got {pid!r}")
    if isinstance(k_step, bool) or not isinstance(k_step, int) or not 0 <= k_step < n_k:
        raise ValueError(f"k_step must be an integer in [0, {n_k}) (K / BLOCK_K rounded up), "
                         f"got {k_step!r}")
    pid_m, pid_n = grouped_pid_to_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)

    # geometry, in inches: B above C, A left of C, one scale for all three
    W, left, gap, area_w, area_h, shortest = 7.0, 0.55, 0.3, 4.35, 3.3, 0.45
    s = min((area_w - gap) / (K + N), (area_h - gap) / (K + M))
    for _ in range(8):  # shrink the scale until the stretched sides fit too
        LM, LN, LK = (max(d * s, shortest) for d in (M, N, K))
        over = max((LK + LN + gap) / area_w, (LK + LM + gap) / area_h)
        if over <= 1.0001:
            break
        s /= over
    stretched = [name for name, d, L in (("M", M, LM), ("N", N, LN), ("K", K, LK))
                 if L > d * s * 1.0001]
    sM, sN, sK = LM / M, LN / N, LK / K
    tile_w, tile_h = BLOCK_N * sN, BLOCK_M * sM
    numbers = show_pids and min(tile_w, tile_h) >= 0.2
    group_rows = min(GROUP_M, n_m)
    order = ("Numbers in C: the program that computes each tile, in the grouped ordering of "
             f"infer_lib.kernels.matmul_kernel (GROUP_M = {GROUP_M}: down {group_rows} "
             f"row{'s' if group_rows > 1 else ''} of tiles, then across). " if numbers else "")
    scale = ("Drawn to scale." if not stretched else
             f"Drawn to scale, except {' and '.join(stretched)}, stretched to stay readable.")
    caption = order + scale + " No hardware figures."
    n_caption = len(textwrap.wrap(caption, _CAPTION_CHARS))
    acc_w = min(tile_w, 0.6)
    acc_h = acc_w * tile_h / tile_w
    # distances from the top
    d_b = 1.0                       # top of B
    d_c = d_b + LK + gap            # top of A and C
    d_gap = d_b + LK + gap / 2      # the accumulator sits level with the gap
    d_acc_text = d_gap + acc_h / 2 + 0.15 + 6 * _LINE
    names = (f"A (M × K) = {M} × {K}", f"C (M × N) = {M} × {N}")
    # a name may overhang its matrix by less than half the gap on each side
    one_line = all(_text_width(t) <= w + 0.8 * gap for t, w in zip(names, (LK, LN)))
    d_legend = max(d_c + LM + (0.4 if one_line else 0.62), d_acc_text + 0.1)
    H = d_legend + 0.75 + n_caption * _LINE + 0.12
    fig, ax = _canvas(W, H)

    ax.text(W / 2, H - 0.2, "A tiled matmul: C = A · B, one program per tile of C",
            ha="center", va="center", fontsize=_FS_TITLE, weight="bold")
    ax.text(W / 2, H - 0.45, f"M = {M}, N = {N}, K = {K};  BLOCK_M = {BLOCK_M}, "
            f"BLOCK_N = {BLOCK_N}, BLOCK_K = {BLOCK_K};  GROUP_M = {GROUP_M}",
            ha="center", va="center", fontsize=_FS)
    ax.text(W / 2, H - 0.45 - _LINE, f"program {pid} computes tile ({pid_m}, {pid_n}) of C; "
            f"shown at k-step {k_step + 1} of {n_k}", ha="center", va="center", fontsize=_FS)

    ax_, ay = left, H - d_c - LM
    cx, cy = ax_ + LK + gap, ay
    bx, by = cx, H - d_b - LK
    edge = _MEMORY

    def rect(x, y, w, h, kind, *, ec=edge, lw=1.0, hatch=None, z=2):
        fc = PALETTE[kind][0] if kind in PALETTE else kind
        _add(ax, Rectangle((x, y), w, h, facecolor=fc, edgecolor=ec, lw=lw, hatch=hatch,
                           zorder=z))

    for x, y, w, h in ((ax_, ay, LK, LM), (bx, by, LN, LK), (cx, cy, LN, LM)):
        rect(x, y, w, h, "hbm", lw=1.4)
    # A's strip (the rows of tile pid_m), B's strip (the columns of tile pid_n)
    r0, r1 = pid_m * BLOCK_M, min((pid_m + 1) * BLOCK_M, M)
    c0, c1 = pid_n * BLOCK_N, min((pid_n + 1) * BLOCK_N, N)
    k0, k1 = k_step * BLOCK_K, min((k_step + 1) * BLOCK_K, K)
    a_y0, a_y1 = ay + LM - r1 * sM, ay + LM - r0 * sM      # rows run downwards
    b_x0, b_x1 = bx + c0 * sN, bx + c1 * sN
    rect(ax_, a_y0, LK, a_y1 - a_y0, "l2", z=2.5)
    rect(b_x0, by, b_x1 - b_x0, LK, "l2", z=2.5)
    if k0 > 0:  # the slabs already used
        rect(ax_, a_y0, k0 * sK, a_y1 - a_y0, "l2", hatch="///", lw=0.6, z=2.6)
        rect(b_x0, by + LK - k0 * sK, b_x1 - b_x0, k0 * sK, "l2", hatch="///", lw=0.6, z=2.6)
    rect(ax_ + k0 * sK, a_y0, (k1 - k0) * sK, a_y1 - a_y0, "smem", lw=2.2, z=4)
    rect(b_x0, by + LK - k1 * sK, b_x1 - b_x0, (k1 - k0) * sK, "smem", lw=2.2, z=4)
    rect(cx + c0 * sN, cy + LM - r1 * sM, (c1 - c0) * sN, (r1 - r0) * sM, "white",
         ec=_COMPUTE, lw=2.6, z=4)
    # tile grids
    for x, y, w, h, rows, cols, hy, wx in ((ax_, ay, LK, LM, n_m, n_k, tile_h, BLOCK_K * sK),
                                           (bx, by, LN, LK, n_k, n_n, BLOCK_K * sK, tile_w),
                                           (cx, cy, LN, LM, n_m, n_n, tile_h, tile_w)):
        for i in range(1, rows):
            ax.plot([x, x + w], [y + h - i * hy] * 2, color=edge, lw=0.5, alpha=0.6, zorder=3)
        for j in range(1, cols):
            ax.plot([x + j * wx] * 2, [y, y + h], color=edge, lw=0.5, alpha=0.6, zorder=3)
    if numbers:
        for p in range(n_m * n_n):
            tm, tn = grouped_pid_to_tile(p, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            xm = cx + (tn * BLOCK_N + min(BLOCK_N, N - tn * BLOCK_N) / 2) * sN
            ym = cy + LM - (tm * BLOCK_M + min(BLOCK_M, M - tm * BLOCK_M) / 2) * sM
            ax.text(xm, ym, str(p), ha="center", va="center", fontsize=_FS, zorder=5,
                    weight="bold" if p == pid else "normal",
                    color=_COMPUTE if p == pid else "#444444")
    # the walk along K
    ya = (a_y0 + a_y1) / 2
    _arrow(ax, (ax_ + 0.05, ya), (ax_ + LK - 0.03, ya), color="#08306b", lw=1.6, zorder=6)
    xb = (b_x0 + b_x1) / 2
    _arrow(ax, (xb, by + LK - 0.05), (xb, by + 0.03), color="#08306b", lw=1.6, zorder=6)
    ax.text(ax_ + LK / 2, ay + LM + 0.13, "walk along K →", ha="center", va="center",
            fontsize=_FS)
    ax.text(bx + LN + 0.08, by + LK / 2, "walk\nalong K\n↓", ha="left", va="center",
            fontsize=_FS)
    # names and sizes: centred under a matrix when they fit, else pushed apart
    for text, x0, w, side in ((names[0], ax_, LK, "right"), (names[1], cx, LN, "left")):
        if one_line:
            ax.text(x0 + w / 2, ay - 0.15, text, ha="center", va="center", fontsize=_FS)
        elif max(_text_width(part) for part in text.split(" = ")) <= w + 0.8 * gap:
            ax.text(x0 + w / 2, ay - 0.1, text.replace(" = ", "\n= "), ha="center", va="top",
                    fontsize=_FS)
        else:
            ax.text(x0 + w if side == "right" else x0, ay - 0.1, text.replace(" = ", "\n= "),
                    ha=side, va="top", fontsize=_FS)
    ax.text(bx - 0.15, by + LK / 2, f"B (K × N)\n= {K} × {N}", ha="right", va="center",
            fontsize=_FS)

    # the accumulator, in registers, right of C; its arrow reaches the tile through the gap
    rx = cx + LN + 0.3
    y_gap = H - d_gap
    acc_y = y_gap - acc_h / 2
    rect(rx, acc_y, acc_w, acc_h, "registers", ec=PALETTE["registers"][1], lw=1.4, z=4)
    x_tile = cx + (c0 + 0.88 * (c1 - c0)) * sN  # off-centre: clear of the tile numbers
    ax.plot([rx - 0.02, x_tile], [y_gap, y_gap], color=_COMPUTE, lw=1.6, zorder=6)
    _arrow(ax, (x_tile, y_gap), (x_tile, cy + LM - r0 * sM + 0.02), color=_COMPUTE, lw=1.6,
           zorder=6)
    lines = ["acc: BLOCK_M × BLOCK_N", "fp32, in registers;", "acc += A slab · B slab",
             "on the tensor cores,",
             f"{n_k} times (once per k-step)," if n_k > 1 else "once (a single k-step),",
             "then written to C once"]
    for i, line in enumerate(lines):
        ax.text(rx, acc_y - 0.15 - i * _LINE, line, ha="left", va="center", fontsize=_FS)

    _legend(ax, [("hbm", "A, B, C: in HBM (global memory)", None),
                 ("l2", "strips this program reads", None),
                 ("smem", "this k-step's slabs: in shared memory (SRAM)", None),
                 ("l2", "slabs already used", "///"),
                 ("registers", "accumulator: in registers", None)],
            loc="upper left", bbox=(0.12, H - d_legend), ncol=2)
    _caption(ax, caption)
    return fig


# ----------------------------------------------------------------------------
# 5. FlashAttention's loop
# ----------------------------------------------------------------------------

_FA_LOOP = (
    "for each key tile j the row needs:",
    "  s     = Q_i K_jᵀ · sm_scale",
    "  (masked tile: −∞ past the diagonal)",
    "  m_new = max(m, rowmax(s))",
    "  p     = exp(s − m_new)",
    "  α     = exp(m − m_new)",
    "  l     = α · l + rowsum(p)",
    "  acc   = α · acc + p V_j",
    "  m     = m_new",
    "then O_i = acc / l → HBM, once",
)


def flash_attention_loop(S_q: int = 1024, S_k: int = 1024, BLOCK_M: int = 128,
                         BLOCK_N: int = 128, causal: bool = True, *,
                         query_tile: int | None = None, key_tile: int | None = None) -> Figure:
    """FlashAttention's loop: one query tile against the stream of key/value tiles.

    Left, the tile map of ``infer_lib.experiments.attention_sweep.tile_map`` — which
    (query tile, key tile) pairs the course's kernel computes without a mask, with the
    element-wise mask, or skips — with the causal diagonal, the row of program
    ``query_tile`` (default: one that has all three kinds) and its current key tile
    ``key_tile``. Right, what that program keeps on chip (its query tile; the running
    max ``m``, running sum ``l`` and accumulator ``acc`` in registers), the key and
    value tiles streaming in from HBM, and the update equations of one step.
    """
    from .experiments.attention_sweep import FULL, MASKED, SKIPPED, tile_counts, tile_map

    tiles = tile_map(S_q, S_k, BLOCK_M, BLOCK_N, causal)  # validates the sizes
    counts = tile_counts(S_q, S_k, BLOCK_M, BLOCK_N, causal)
    n_m, n_n = len(tiles), len(tiles[0])
    if query_tile is None:
        varied = [m for m in range(n_m) if len(set(tiles[m])) == 3]
        query_tile = varied[len(varied) * 2 // 3] if varied else n_m * 2 // 3
    if isinstance(query_tile, bool) or not isinstance(query_tile, int) or not 0 <= query_tile < n_m:
        raise ValueError(f"query_tile must be an integer in [0, {n_m}), got {query_tile!r}")
    row = tiles[query_tile]
    needed = [n for n, kind in enumerate(row) if kind != SKIPPED]
    if key_tile is None:
        key_tile = needed[len(needed) // 2] if needed else 0
    if isinstance(key_tile, bool) or not isinstance(key_tile, int) or not 0 <= key_tile < n_n:
        raise ValueError(f"key_tile must be an integer in [0, {n_n}), got {key_tile!r}")
    i, j = query_tile, key_tile

    caption = ("Tile kinds: infer_lib.experiments.attention_sweep.tile_map, the bounds of "
               "infer_lib.kernels.flash_attention_kernel (FlashAttention-2, Dao 2023). "
               "Query q sees keys k ≤ q + S_k − S_q (the diagonal, aligned bottom-right). "
               "No hardware figures.")
    n_caption = len(textwrap.wrap(caption, _CAPTION_CHARS))
    W = 7.0
    grid_max, gx0 = 3.0, 0.62
    right_x, right_w = 3.95, W - 3.95 - 0.1
    panel_h = 0.42 + 0.14 + 0.6 + 0.14 + 0.42 + 0.2 + len(_FA_LOOP) * _LINE
    top = 1.05
    legend_h = 0.5 + (_LINE if causal else 0)
    H = top + max(panel_h, grid_max + 0.2) + 0.25 + legend_h + n_caption * _LINE + 0.12
    fig, ax = _canvas(W, H)

    ax.text(W / 2, H - 0.2, "FlashAttention: one query tile against the stream of K/V tiles",
            ha="center", va="center", fontsize=_FS_TITLE, weight="bold")
    mask = "causal" if causal else "not causal"
    ax.text(W / 2, H - 0.45, f"S_q = {S_q}, S_k = {S_k}, BLOCK_M = {BLOCK_M}, "
            f"BLOCK_N = {BLOCK_N}, {mask}", ha="center", va="center", fontsize=_FS)
    ax.text(W / 2, H - 0.45 - _LINE, f"query tile i = {i} (its row outlined), at key tile j = {j}"
            " (tiles are numbered from 0)", ha="center", va="center", fontsize=_FS)

    # the tile map, in element coordinates: x = key index, y = query index (downwards)
    ex = min(grid_max / S_k, 0.45 / BLOCK_N)
    ey = min(grid_max / S_q, 0.45 / BLOCK_M)
    ex, ey = max(ex, 0.3 / S_k), max(ey, 0.3 / S_q)
    gy_top = H - top - 0.2

    def X(key):
        return gx0 + key * ex

    def Y(query):
        return gy_top - query * ey

    style = {FULL: dict(facecolor=PALETTE["compute"][0], edgecolor=_COMPUTE, lw=0.8),
             MASKED: dict(facecolor=PALETTE["compute"][0], edgecolor=_COMPUTE, lw=0.8,
                          hatch="////"),
             SKIPPED: dict(facecolor="white", edgecolor="#969696", lw=0.8, linestyle=(0, (2, 2)))}
    for m in range(n_m):
        q0, q1 = m * BLOCK_M, min((m + 1) * BLOCK_M, S_q)
        for n in range(n_n):
            k0, k1 = n * BLOCK_N, min((n + 1) * BLOCK_N, S_k)
            _add(ax, Rectangle((X(k0), Y(q1)), (k1 - k0) * ex, (q1 - q0) * ey, zorder=2,
                               gid=f"tile {m} {n} {tiles[m][n]}", **style[tiles[m][n]]))
    q0, q1 = i * BLOCK_M, min((i + 1) * BLOCK_M, S_q)
    _add(ax, Rectangle((X(0), Y(q1)), S_k * ex, (q1 - q0) * ey, facecolor="none",
                       edgecolor="black", lw=2.2, zorder=4))
    k0, k1 = j * BLOCK_N, min((j + 1) * BLOCK_N, S_k)
    _add(ax, Rectangle((X(k0), Y(q1)), (k1 - k0) * ex, (q1 - q0) * ey,
                       facecolor=PALETTE["tensor"][0], edgecolor="black", lw=2.2, zorder=5,
                       hatch="////" if row[j] == MASKED else None))
    if needed and needed[-1] > 0:  # the walk along the row, to its last needed tile
        end = min((needed[-1] + 1) * BLOCK_N, S_k)
        ym = Y((q0 + q1) / 2)
        _arrow(ax, (X(0) + 0.04, ym), (X(end) - 0.04, ym), color="black", lw=1.4, zorder=6)
    if causal:  # key = query + (S_k − S_q), within the map
        diag = S_k - S_q
        qa, qb = max(0, -diag), min(S_q, S_k - diag)
        if qa < qb:
            ax.plot([X(qa + diag), X(qb + diag)], [Y(qa), Y(qb)], color="#a50f15", lw=1.8,
                    zorder=7)
    ax.text((X(0) + X(S_k)) / 2, gy_top + 0.14, "key/value tiles j →", ha="center",
            va="center", fontsize=_FS)
    grid_h = S_q * ey
    for text in ("query tiles i (one program each) →", "query tiles i →", None):
        if text is None:  # too short a map for a label alongside: put it underneath
            ax.text(gx0, Y(S_q) - 0.14, "↑ query tiles i (one program each)", ha="left",
                    va="center", fontsize=_FS)
        elif _text_width(text) + 0.1 <= grid_h:
            ax.text(gx0 - 0.16, (Y(0) + Y(S_q)) / 2, text, rotation=-90, ha="center",
                    va="center", fontsize=_FS)
        else:
            continue
        break

    # the program's view
    y = H - top
    _box(ax, right_x, y - 0.42, right_w, 0.42, "smem", "Q_i: BLOCK_M × D, loaded once",
         ["kept on chip (SRAM / registers)"], title_weight="normal")
    y -= 0.42 + 0.14
    widths = (0.8, 0.8, right_w - 1.6 - 0.16)
    x = right_x
    for (name, sub), w in zip((("m", ("running", "max")), ("l", ("running", "sum")),
                               ("acc", ("BLOCK_M × D", "fp32"))), widths):
        _box(ax, x, y - 0.6, w, 0.6, "registers", name, sub)
        x += w + 0.08
    y -= 0.6 + 0.14
    _box(ax, right_x, y - 0.42, right_w, 0.42, "hbm", "K_j, V_j: BLOCK_N × D each",
         ["stream from HBM through SRAM, tile by tile"], title_weight="normal")
    y -= 0.42 + 0.2
    for k, line in enumerate(_FA_LOOP):
        ax.text(right_x, y - k * _LINE, line, ha="left", va="center", fontsize=_FS,
                family="monospace")

    handles = [Patch(label=f"full: no mask ({counts[FULL]})", **{k: v for k, v in
                                                               style[FULL].items() if k != "lw"}),
               Patch(label=f"masked ({counts[MASKED]})", **{k: v for k, v in style[MASKED].items()
                                                          if k != "lw"}),
               Patch(label=f"skipped: never loaded ({counts[SKIPPED]})",
                     **{k: v for k, v in style[SKIPPED].items() if k != "lw"})]
    handles += [Patch(facecolor="none", edgecolor="black", lw=2.2, label="row of query tile i"),
                Patch(facecolor=PALETTE["tensor"][0], edgecolor="black", lw=2.2,
                      label="current K/V tile j")]
    if causal:
        handles.append(Line2D([], [], color="#a50f15", lw=1.8, label="causal diagonal"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.12, 0.12 + n_caption * _LINE
                                                                 + 0.1 + legend_h),
              bbox_transform=ax.transData, ncol=3, fontsize=_FS, frameon=False,
              handlelength=1.6, columnspacing=1.2, borderaxespad=0)
    _caption(ax, caption)
    return fig


# ----------------------------------------------------------------------------
# 6. Prefill and decode
# ----------------------------------------------------------------------------

def prefill_decode(B: int = 4, S: int = 6, new: int = 4, *, step: int = 2) -> Figure:
    """The two stages of inference on a batch of ``B`` prompts of ``S`` tokens (chapter 5).

    Left, **prefill**: the whole ``(B, S)`` block of prompt tokens goes through the model in
    one forward pass; every weight read from HBM serves all ``B · S`` tokens, and the keys and
    values of every token are written to the KV cache. Right, **decode**: one new token per
    sequence per step, a ``(B, 1)`` column (step ``step`` of ``new`` highlighted); each step
    reads every weight again for only ``B`` tokens, and reads each sequence's whole cache (its
    prompt and the tokens decoded so far). Below, what sits in HBM. No hardware figures.
    """
    _check_positive(B=B, S=S, new=new, step=step)
    if step > new:
        raise ValueError(f"step must be at most new={new} (the decode steps drawn), got {step}")
    caption = ("Per token, a forward pass does about 2 FLOPs per weight. Prefill: all B·S tokens "
               "share one read of the weights, so its intensity grows with B·S. A decode step: "
               "B tokens share the weights, and every sequence reads its cache as well, so its "
               "intensity stays below B. No hardware figures.")
    n_caption = len(textwrap.wrap(caption, _CAPTION_CHARS))
    W = 7.0
    cell = min(0.22, 2.2 / (S + new), 1.5 / B)
    grid_h = B * cell
    top = 0.95                                   # title and subtitle
    head_h = 2 * _LINE + 0.12                    # a panel's heading
    hbm_h = 1.05
    legend_h = 0.5
    H = top + head_h + grid_h + 0.55 + 0.75 + hbm_h + legend_h + n_caption * _LINE + 0.2
    fig, ax = _canvas(W, H)

    ax.text(W / 2, H - 0.22, "Prefill and decode: what one forward pass processes, and reads",
            ha="center", va="center", fontsize=_FS_TITLE, weight="bold")
    ax.text(W / 2, H - 0.22 - 1.4 * _LINE, f"B = {B} sequences, prompts of S = {S} tokens, "
            f"{new} decode steps (step {step} highlighted)", ha="center", va="center",
            fontsize=_FS)

    panels = ((0.45, "Prefill: the whole prompt at once", "one forward pass over (B, S)"),
              (3.75, "Decode: one token per sequence per step", f"step {step}: a (B, 1) column"))
    y_head = H - top
    y_grid_top = y_head - head_h
    y_grid_bot = y_grid_top - grid_h
    cached = dict(facecolor=PALETTE["l2"][0], edgecolor=_MEMORY, lw=0.8)
    done = dict(facecolor=PALETTE["l2"][0], edgecolor=_MEMORY, lw=0.8, hatch="///")
    current = dict(facecolor=PALETTE["tensor"][0], edgecolor=_COMPUTE, lw=0.8)
    future = dict(facecolor="white", edgecolor="#969696", lw=0.8, linestyle=(0, (2, 2)))
    prompt = dict(facecolor=PALETTE["compute"][0], edgecolor=_COMPUTE, lw=0.8)
    centres = []
    for k, (x0, title, sub) in enumerate(panels):
        ax.text(x0, y_head - 0.5 * _LINE, title, ha="left", va="center", fontsize=_FS,
                weight="bold")
        ax.text(x0, y_head - 1.6 * _LINE, sub, ha="left", va="center", fontsize=_FS)
        cols = S if k == 0 else S + new
        for b in range(B):
            for t in range(cols):
                if k == 0:
                    st = prompt
                elif t < S or t < S + step - 1:
                    st = cached if t < S else done
                elif t == S + step - 1:
                    st = current
                else:
                    st = future
                _add(ax, Rectangle((x0 + t * cell, y_grid_top - (b + 1) * cell), cell, cell,
                                   zorder=2, gid=f"{'prefill' if k == 0 else 'decode'} {b} {t}",
                                   **st))
        if k == 0:      # the block of one pass
            _add(ax, Rectangle((x0, y_grid_bot), S * cell, grid_h, facecolor="none",
                               edgecolor="black", lw=2.2, zorder=4))
        else:           # the column of this step
            _add(ax, Rectangle((x0 + (S + step - 1) * cell, y_grid_bot), cell, grid_h,
                               facecolor="none", edgecolor="black", lw=2.2, zorder=4))
        ax.text(x0, y_grid_bot - 0.16, "positions →", ha="left", va="center", fontsize=_FS)
        ax.text(x0 - 0.08, (y_grid_top + y_grid_bot) / 2, "B", ha="right", va="center",
                fontsize=_FS)
        centres.append(x0 + (S if k == 0 else S + step - 0.5) * cell / (1 if k else 2))

    # what each pass reads and writes: labels between the grids and HBM
    y_hbm_top = y_grid_bot - 0.55 - 0.75
    y_hbm = y_hbm_top - hbm_h
    _box(ax, 0.3, y_hbm, W - 0.6, hbm_h, "hbm")
    ax.text(0.42, y_hbm_top - 0.16, "HBM", ha="left", va="center", fontsize=_FS,
            weight="bold")
    wx, ww = 0.95, 2.45
    kx, kw = 3.75, 2.85
    _box(ax, wx, y_hbm + 0.12, ww, hbm_h - 0.3, "l2", "weights: 2·N bytes (16-bit)",
         ["the same for every token"], title_weight="normal")
    _box(ax, kx, y_hbm + 0.12, kw, hbm_h - 0.3, "l2", "KV cache: B · T · (KV bytes per token)",
         ["grows with batch and context"], title_weight="normal")
    y_a0, y_a1 = y_hbm + 0.12 + hbm_h - 0.3, y_grid_bot - 0.32
    x_pre = panels[0][0] + S * cell / 2
    x_dec = panels[1][0] + (S + step - 0.5) * cell
    _arrow(ax, (x_pre, y_a0), (x_pre, y_a1), color=_MEMORY, lw=1.6, zorder=5)
    ax.text(x_pre + 0.1, (y_a0 + y_a1) / 2 + 0.5 * _LINE, "weights read once,", ha="left",
            va="center", fontsize=_FS)
    ax.text(x_pre + 0.1, (y_a0 + y_a1) / 2 - 0.5 * _LINE, "B·S tokens share them", ha="left",
            va="center", fontsize=_FS)
    # the prefill fills the cache that decoding reads: prefill block → the decode grid's prompt
    y_mid = (y_grid_top + y_grid_bot) / 2
    x_from, x_to = panels[0][0] + S * cell + 0.1, panels[1][0] - 0.25
    _arrow(ax, (x_from, y_mid), (x_to, y_mid), color=_COMPUTE, lw=1.6, ls="--")
    ax.text((x_from + x_to) / 2, y_mid + 0.6 * _LINE, "writes K, V", ha="center", va="center",
            fontsize=_FS)
    ax.text((x_from + x_to) / 2, y_mid - 0.6 * _LINE, "to the cache", ha="center", va="center",
            fontsize=_FS)
    _arrow(ax, (wx + ww - 0.2, y_a0), (x_dec - 0.12, y_a1), color=_MEMORY, lw=1.6, zorder=5)
    _arrow(ax, (x_dec + 0.05, y_a0), (x_dec + 0.05, y_a1), color=_MEMORY, lw=1.6, zorder=5)
    for i, line in enumerate(("each step reads", "all weights, for", "B tokens, and", "every cache")):
        ax.text(x_dec + 0.2, (y_a0 + y_a1) / 2 + (1.5 - i) * _LINE, line, ha="left",
                va="center", fontsize=_FS)

    handles = [Patch(label="prompt token (prefill)", **{k: v for k, v in prompt.items() if k != "lw"}),
               Patch(label="in the cache", **{k: v for k, v in cached.items() if k != "lw"}),
               Patch(label="decoded, now cached", **{k: v for k, v in done.items() if k != "lw"}),
               Patch(label="this step's new token", **{k: v for k, v in current.items()
                                                       if k != "lw"}),
               Patch(label="later steps", **{k: v for k, v in future.items() if k != "lw"})]
    ax.legend(handles=handles, loc="upper left",
              bbox_to_anchor=(0.12, 0.12 + n_caption * _LINE + 0.1 + legend_h),
              bbox_transform=ax.transData, ncol=3, fontsize=_FS, frameon=False,
              handlelength=1.6, columnspacing=1.2, borderaxespad=0)
    _caption(ax, caption)
    return fig


# ----------------------------------------------------------------------------
# 7. Split-KV decode attention
# ----------------------------------------------------------------------------

def split_kv_decode(S: int = 4096, num_splits: int = 4, group: int = 4) -> Figure:
    """Split-KV ("flash decoding") for one sequence and one KV head (chapter 6).

    Top, the ``group`` query heads that share the KV head: one tile of one program per split.
    Middle, the sequence's ``S`` cached keys and values cut into ``num_splits`` chunks (1 to 6),
    each streamed by its own program, which writes its partial maximum ``m_s``, sum ``l_s`` and
    un-normalised output ``o_s``. Bottom, the combine kernel that merges the partials exactly,
    with the log-sum-exp rescaling of ``infer_lib.kernels.decode_attention_kernel``."""
    for nm, v, lo, hi in (("S", S, 1, None), ("num_splits", num_splits, 1, 6),
                          ("group", group, 1, None)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi and v > hi):
            bound = f"between {lo} and {hi}" if hi else f"≥ {lo}"
            raise ValueError(f"{nm} must be an integer {bound}, got {v!r}")
    if num_splits > S:
        raise ValueError(f"num_splits={num_splits} is more than the S={S} keys to split")
    chunk = math.ceil(S / num_splits)
    bounds = [(s * chunk, min((s + 1) * chunk, S)) for s in range(num_splits)]
    bounds = [(a, b) for a, b in bounds if a < b]
    n = len(bounds)

    caption = ("Split-KV decoding (Flash-Decoding, Dao, Haziza, Massa and Sizov 2023), as "
               "infer_lib.kernels.decode_attention_kernel does it: grid (B · H_kv, splits), then "
               "one combine program per (sequence, query head). No hardware figures.")
    n_caption = len(textwrap.wrap(caption, _CAPTION_CHARS))
    W = 7.0
    formula = ("m = max_s m_s,    w_s = 2^(m_s − m)",
               "out = Σ_s w_s · o_s  /  Σ_s w_s · l_s")
    H = 0.75 + 0.55 + 0.35 + 0.75 + 0.35 + 0.6 + 0.35 + 0.55 + len(formula) * _LINE \
        + 0.15 + n_caption * _LINE + 0.15
    fig, ax = _canvas(W, H)
    ax.text(W / 2, H - 0.2, "Split-KV decode attention: one sequence, one KV head",
            ha="center", va="center", fontsize=_FS_TITLE, weight="bold")
    ax.text(W / 2, H - 0.45, f"S = {S} cached tokens in {n} splits of up to {chunk} keys; "
            f"G = {group} query heads share the KV head", ha="center", va="center", fontsize=_FS)

    x0, x1 = 0.35, W - 0.35
    y = H - 0.75
    _box(ax, x0, y - 0.55, x1 - x0, 0.55, "registers",
         f"q: the G = {group} query heads of this KV head, one tile (rows padded to 16)",
         ["loaded by every split's program; each K/V tile then serves all G rows"],
         title_weight="normal", gid="queries")
    y -= 0.55 + 0.35
    seg_w = (x1 - x0 - 0.08 * (n - 1)) / n
    cache_top = y
    for s, (a, b) in enumerate(bounds):
        sx = x0 + s * (seg_w + 0.08)
        _arrow(ax, (sx + seg_w / 2, cache_top + 0.33), (sx + seg_w / 2, cache_top + 0.02),
               color=_GREY, lw=1.2)
        lines = [f"keys {a}–{b - 1}"] if seg_w >= 1.2 else [f"{a}–{b - 1}"]
        _box(ax, sx, y - 0.75, seg_w, 0.75, "hbm", f"split {s}", lines + [f"program {s}"],
             gid=f"split {s}")
    ax.text(x0 - 0.05, y - 0.375, "K, V", ha="right", va="center", fontsize=_FS, rotation=90)
    y -= 0.75 + 0.35
    for s in range(n):
        sx = x0 + s * (seg_w + 0.08)
        _arrow(ax, (sx + seg_w / 2, y + 0.33), (sx + seg_w / 2, y + 0.02), color=_LINK, lw=1.4)
        _box(ax, sx, y - 0.6, seg_w, 0.6, "link", f"m_{s}, l_{s}, o_{s}",
             ["partials, fp32"], gid=f"partial {s}")
    y -= 0.6 + 0.35
    cx, cw = W / 2 - 1.6, 3.2
    for s in range(n):
        sx = x0 + s * (seg_w + 0.08) + seg_w / 2
        _arrow(ax, (sx, y + 0.33), (cx + cw * (s + 1) / (n + 1), y + 0.02), color=_LINK, lw=1.2)
    _box(ax, cx, y - 0.55, cw, 0.55, "compute", "combine: one program per (b, h)",
         ["rescales each split to the common maximum"], gid="combine")
    y -= 0.55 + 0.1
    for k, line in enumerate(formula):
        ax.text(W / 2, y - (k + 0.5) * _LINE, line, ha="center", va="center", fontsize=_FS,
                family="monospace")
    _caption(ax, caption)
    return fig


# ----------------------------------------------------------------------------
# 8. From multi-head to multi-query attention
# ----------------------------------------------------------------------------

def _fraction(n: int, d: int) -> str:
    """``n / d`` in lowest terms, as drawn: '1', '1/4'."""
    g = math.gcd(n, d)
    n, d = n // g, d // g
    return f"{n}" if d == 1 else f"{n}/{d}"


def kv_head_groups(H: int = 8, kv_heads: tuple[int, ...] = (8, 2, 1)) -> Figure:
    """Which key/value head each query head reads, from multi-head to multi-query attention
    (chapter 7). One row per entry of ``kv_heads`` (each a divisor of ``H``, at most 4 rows):
    the ``H`` query heads on top (``q0``, ``q1``, … — numbers only where the boxes are narrow),
    the ``H_kv`` K/V heads under them, each as wide as the group
    of ``G = H / H_kv`` consecutive query heads it serves (query head ``h`` reads K/V head
    ``h // G``, as ``model.layers.Attention`` and ``kernels.decode_attention`` index them), and
    beside each row what is cached: ``H_kv`` keys and values per layer and token, ``H_kv / H``
    of multi-head attention's. ``H`` is at most 16, so that every head keeps its label.
    No hardware figures."""
    _check_positive(H=H)
    if H > 16:
        raise ValueError(f"H must be at most 16 (one labelled box per query head), got {H}")
    if not isinstance(kv_heads, (tuple, list)) or not 1 <= len(kv_heads) <= 4:
        raise ValueError(f"kv_heads must be a tuple of 1 to 4 head counts, got {kv_heads!r}")
    for n in kv_heads:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or H % n:
            raise ValueError(f"every entry of kv_heads must divide H={H}, got {n!r}")
    caption = ("Query head h reads K/V head h // G, G = H / H_kv: a K/V head serves a block of "
               "consecutive query heads (infer_lib.model.layers.Attention, "
               "infer_lib.kernels.decode_attention). The query projections and the attention "
               "FLOPs are the same in every row; the keys and values cached shrink by G. "
               "No hardware figures.")
    n_caption = len(textwrap.wrap(caption, _CAPTION_CHARS))
    W = 7.0
    row_h = 1.25
    H_fig = 0.75 + len(kv_heads) * row_h + 0.1 + n_caption * _LINE + 0.2
    fig, ax = _canvas(W, H_fig)
    ax.text(W / 2, H_fig - 0.22, "From multi-head to multi-query attention", ha="center",
            va="center", fontsize=_FS_TITLE, weight="bold")
    ax.text(W / 2, H_fig - 0.22 - 1.4 * _LINE, f"H = {H} query heads; each row shares fewer "
            "key/value heads among them", ha="center", va="center", fontsize=_FS)
    x0, x1 = 0.3, 4.25                      # the heads; the text goes right of x1
    gap = 0.04
    cell = (x1 - x0) / H
    box_h = 0.32
    y = H_fig - 0.75
    for n in kv_heads:
        G = H // n
        name = "MHA" if n == H else ("MQA" if n == 1 else f"GQA-{n}")
        q_top = y - 0.08
        kv_top = q_top - box_h - 0.42
        for h in range(H):
            _box(ax, x0 + h * cell + gap / 2, q_top - box_h, cell - gap, box_h, "compute",
                 None, [f"q{h}" if cell >= 0.4 else f"{h}"], rounding=0.03,
                 gid=f"{name} q{h}")
        for j in range(n):
            kx = x0 + j * G * cell + gap / 2
            _box(ax, kx, kv_top - box_h, G * cell - gap, box_h, "hbm", None,
                 [f"{j}" if G * cell < 0.4 else f"kv{j}" if G * cell < 0.9 else f"K, V head {j}"],
                 rounding=0.03,
                 gid=f"{name} kv{j}")
            for h in range(j * G, (j + 1) * G):
                _add(ax, FancyArrowPatch((x0 + (h + 0.5) * cell, kv_top),
                                         (x0 + (h + 0.5) * cell, q_top - box_h),
                                         arrowstyle="-|>,head_width=0.12,head_length=0.18",
                                         mutation_scale=10, color=_GREY, lw=0.9, shrinkA=0,
                                         shrinkB=0, zorder=1, gid=f"{name} q{h} reads kv{j}"))
        tx = x1 + 0.2
        lines = (f"H_kv = {n} K/V heads, G = {G}",
                 f"caches {n} K + {n} V per layer",
                 "KV cache: all of MHA's" if n == H else f"KV cache: {_fraction(n, H)} of MHA's")
        ax.text(tx, q_top - 0.5 * _LINE, f"{name}", ha="left", va="center", fontsize=_FS,
                weight="bold")
        for i, line in enumerate(lines):
            ax.text(tx, q_top - (1.5 + i) * _LINE, line, ha="left", va="center", fontsize=_FS)
        y -= row_h
    _caption(ax, caption)
    return fig
