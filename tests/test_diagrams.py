"""Tests of infer_lib.diagrams: each diagram is a Figure with its labels; the numbers on it
are the spec table's; it draws for every GPU of the table and for one the table does not know
(figures it lacks are written "not given"); no text is under 9 pt, leaves the figure or its
box, or overlaps another; the tile maps are the kernels'; and every figure saves as a PNG."""

import functools
import re
import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from infer_lib import diagrams, hardware  # noqa: E402
from infer_lib.experiments.attention_sweep import tile_counts, tile_map  # noqa: E402

KEYS = list(hardware.SPECS)

#: a GPU outside the table, as hardware.detect() builds it: the driver reports SMs and memory
#: only (no L2 or shared-memory figure here), every bandwidth and peak is None
UNKNOWN = hardware.spec_from_properties(types.SimpleNamespace(
    name="NVIDIA Mystery GPU", major=12, minor=1, multi_processor_count=84,
    total_memory=48 * 10**9))


@functools.cache
def drawn(name: str, *args, **kwargs):
    """``diagrams.<name>(*args, **kwargs)``, built once for all the tests that read it."""
    return getattr(diagrams, name)(*args, **kwargs)


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text().strip()]


def joined(fig) -> str:
    return "\n".join(texts(fig))


def patches(fig, prefix: str):
    """The patches whose gid (the name the diagrams give them) starts with ``prefix``."""
    return fig.findobj(lambda a: isinstance(a, Patch) and (a.get_gid() or "").startswith(prefix))


def layout_problems(fig) -> list[str]:
    """Text under 9 pt, outside the figure, outside its box, or on top of another text."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    page = fig.bbox
    found = [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
    extents = [t.get_window_extent(renderer) for t in found]
    problems = []
    for t, bb in zip(found, extents):
        name = repr(t.get_text())
        if t.get_fontsize() < diagrams.MIN_FONT:
            problems.append(f"{name} is {t.get_fontsize()} pt")
        if bb.x0 < -0.5 or bb.y0 < -0.5 or bb.x1 > page.x1 + 0.5 or bb.y1 > page.y1 + 0.5:
            problems.append(f"{name} leaves the figure")
        box = getattr(t, "diagram_box", None)
        if box is not None:
            (x0, y0), (x1, y1) = t.axes.transData.transform(
                [(box[0], box[1]), (box[0] + box[2], box[1] + box[3])])
            if bb.x0 < x0 + 1 or bb.x1 > x1 - 1 or bb.y0 < y0 or bb.y1 > y1:
                problems.append(f"{name} sticks out of its box")
    for i in range(len(found)):
        for k in range(i + 1, len(found)):
            a, b = extents[i], extents[k]
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1:
                problems.append(f"{found[i].get_text()!r} overlaps {found[k].get_text()!r}")
    return problems


# ----------------------------------------------------------------------------
# Every diagram: a closed Figure of the column's width, readable, saved as PNG
# ----------------------------------------------------------------------------

DEFAULTS = {
    "sm": lambda: diagrams.sm(),
    "memory_hierarchy": lambda: diagrams.memory_hierarchy(),
    "node": lambda: diagrams.node(),
    "tiled_matmul": lambda: diagrams.tiled_matmul(),
    "flash_attention_loop": lambda: diagrams.flash_attention_loop(),
    "prefill_decode": lambda: diagrams.prefill_decode(),
    "split_kv_decode": lambda: diagrams.split_kv_decode(),
    "kv_head_groups": lambda: diagrams.kv_head_groups(),
}

LAYOUTS = {
    **{f"{name}-{key}": (lambda name=name, key=key: drawn(name, spec=key))
       for name in ("sm", "memory_hierarchy", "node") for key in KEYS},
    **{f"{name}-unknown": (lambda name=name: drawn(name, spec=UNKNOWN))
       for name in ("sm", "memory_hierarchy", "node")},
    **{f"node-{n}": (lambda n=n: diagrams.node(n)) for n in (1, 2, 3, 4, 16)},
    "tiled_matmul": lambda: diagrams.tiled_matmul(),
    **{f"prefill_decode-{B}x{S}-{new}": (lambda B=B, S=S, new=new: diagrams.prefill_decode(B, S, new, step=new - 1))
       for B, S, new in ((1, 3, 2), (4, 6, 4), (8, 12, 6))},
    **{f"split_kv_decode-{n}": (lambda n=n: diagrams.split_kv_decode(num_splits=n)) for n in (1, 2, 4, 6)},
    "split_kv_decode-mqa": lambda: diagrams.split_kv_decode(S=32768, num_splits=3, group=8),
    **{f"kv_head_groups-{H}-{'-'.join(map(str, kv))}": (lambda H=H, kv=kv: diagrams.kv_head_groups(H, kv))
       for H, kv in ((8, (8, 2, 1)), (4, (4, 2, 1)), (16, (16, 8, 2, 1)), (12, (12, 3)), (1, (1,)))},
    "tiled_matmul-ragged": lambda: diagrams.tiled_matmul(300, 500, 200, 64, 64, 32, pid=20,
                                                         k_step=6),
    "tiled_matmul-decode": lambda: diagrams.tiled_matmul(64, 2048, 1024, 64, 128, 64, pid=3,
                                                         k_step=0),
    "tiled_matmul-tall": lambda: diagrams.tiled_matmul(2048, 128, 256, 128, 128, 64, GROUP_M=4,
                                                       pid=9, k_step=3),
    "tiled_matmul-one-tile": lambda: diagrams.tiled_matmul(16, 16, 16, 16, 16, 16, pid=0,
                                                           k_step=0),
    "flash_attention_loop": lambda: diagrams.flash_attention_loop(),
    "flash_attention_loop-not-causal": lambda: diagrams.flash_attention_loop(causal=False),
    "flash_attention_loop-ragged": lambda: diagrams.flash_attention_loop(100, 300, 32, 64),
    "flash_attention_loop-decode": lambda: diagrams.flash_attention_loop(1, 4096, 16, 128),
    "flash_attention_loop-long": lambda: diagrams.flash_attention_loop(4096, 4096),
    "flash_attention_loop-more-queries": lambda: diagrams.flash_attention_loop(300, 200, 64, 32),
}


@pytest.mark.parametrize("name", DEFAULTS)
def test_a_closed_figure_of_the_column_width(name):
    before = plt.get_fignums()
    fig = DEFAULTS[name]()
    assert isinstance(fig, Figure)
    assert fig.get_size_inches()[0] == pytest.approx(7.0)    # ~700 px on the page
    assert plt.get_fignums() == before                         # pyplot keeps no copy


@pytest.mark.parametrize("name", LAYOUTS)
def test_readable_layout(name):
    assert layout_problems(LAYOUTS[name]()) == []


@pytest.mark.parametrize("name", DEFAULTS)
def test_saves_as_png(name, tmp_path):
    path = tmp_path / f"{name}.png"
    DEFAULTS[name]().savefig(path, dpi=100)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 700          # width in pixels


@pytest.mark.parametrize("name", DEFAULTS)
def test_caption_names_sources(name):
    caption = " ".join(t for t in texts(DEFAULTS[name]()))
    assert "Sources:" in caption or "No hardware figures" in caption


def test_spec_argument():
    h100 = hardware.SPECS["h100_sxm"]
    assert joined(diagrams.memory_hierarchy()) == joined(diagrams.memory_hierarchy("h100_sxm"))
    assert joined(diagrams.memory_hierarchy(h100)) == joined(diagrams.memory_hierarchy(None))
    with pytest.raises(KeyError, match="no GPU 'h1000' in infer_lib.hardware.SPECS"):
        diagrams.sm("h1000")
    with pytest.raises(TypeError, match="spec must be"):
        diagrams.node(spec=3)


# ----------------------------------------------------------------------------
# The streaming multiprocessor
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", KEYS)
def test_sm_parts(key):
    spec = hardware.SPECS[key]
    text = joined(drawn("sm", spec=key))
    for b in range(1, 5):
        assert f"processing block {b} of 4" in text
    for part in ("L1 instruction cache", "L0 i-cache", "warp scheduler + dispatch",
                 "register file", "FP32", "INT32", "tensor core", "special-function unit (SFU)",
                 "load/store units", "L1 data cache / shared memory"):
        assert part in text, part
    assert f"1 of the {spec.sms} SMs of the {spec.name}" in text
    assert f"up to {spec.smem_per_sm_KB:g} KB of it usable as shared memory" in text
    assert f"L2 cache ({spec.l2_MB:g} MB" in text
    assert ("Tensor Memory Accelerator (TMA)" in text) == (spec.architecture == "Hopper")


def test_sm_h100_counts_are_the_whitepapers():
    text = texts(diagrams.sm("h100_sxm"))
    assert ("per SM: 128 FP32, 64 INT32, 64 FP64 CUDA cores, 4 tensor cores, "
            "256 KB of registers") in text
    assert text.count("×32") == 4                     # FP32 cores per processing block
    assert text.count("×1 (4th gen)") == 4            # one tensor core per block
    assert text.count("register file: 64 KB (16,384 × 32-bit)") == 4
    assert "256 KB L1 data cache / shared memory" in text


def test_sm_without_cited_counts_shows_none():
    for spec in ("b200", UNKNOWN):
        text = joined(drawn("sm", spec=spec))
        assert "unit counts per SM: not given" in text
        assert "×" not in text                          # no unit count, no register-file size
    assert "shared-memory size not given" in text
    assert "L2 cache (size not given" in text


def test_sm_facts_agree_with_the_table():
    """The facts are the table's GPUs' SMs: same architecture, usable shared memory within
    the L1 + shared total, and an FP32 peak that means a plausible clock."""
    covered = [s for s in hardware.SPECS.values() if s.compute_capability in diagrams.SM_FACTS]
    assert {s.architecture for s in covered} >= {"Volta", "Turing", "Ampere", "Ada Lovelace",
                                                  "Hopper"}
    for spec in covered:
        facts = diagrams.SM_FACTS[spec.compute_capability]
        assert spec.architecture in facts.chip
        assert spec.smem_per_sm_KB <= facts.l1_smem_KB
        clock_GHz = spec.fp32_TFLOPs * 1e3 / (2 * facts.fp32_per_sm * spec.sms)
        assert 1.0 < clock_GHz < 2.2, (spec.key, clock_GHz)
        assert facts.source[1].startswith("https://")


# ----------------------------------------------------------------------------
# The memory hierarchy
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", KEYS)
def test_memory_hierarchy_numbers_are_the_tables(key):
    spec = hardware.SPECS[key]
    text = joined(drawn("memory_hierarchy", spec=key))
    for level in ("registers", "shared memory", "L2 cache", spec.memory_type, "host DRAM",
                  "other GPUs"):
        assert level in text, level
    assert f"{spec.bandwidth_GBps:g} GB/s ({spec.memory_type})" in text
    assert f"{spec.smem_per_sm_KB:g} KB per SM" in text
    assert f"{spec.l2_MB:g} MB" in text
    assert f"{spec.memory_GB:g} GB {spec.memory_type}" in text
    assert f"PCIe: {spec.pcie_GBps:g} GB/s" in text
    if spec.nvlink_GBps is None:
        assert "no NVLink on this GPU" in text
    else:
        assert f"NVLink: {spec.nvlink_GBps:g} GB/s" in text


def test_memory_hierarchy_h100():
    text = joined(diagrams.memory_hierarchy())
    assert "3350 GB/s (HBM3)" in text
    assert "50 MB" in text and "80 GB HBM3" in text and "228 KB per SM" in text
    assert "NVLink: 900 GB/s" in text and "PCIe: 128 GB/s" in text
    assert "32 banks × 4 B = 128 B per clock per SM" in text


def _width(patch):
    return patch.get_extents().width


@pytest.mark.parametrize("key", KEYS)
def test_memory_hierarchy_widths_follow_capacity_and_bandwidth(key):
    fig = drawn("memory_hierarchy", spec=key)
    level = {p.get_gid().removeprefix("level "): _width(p) for p in patches(fig, "level ")}
    spec = hardware.SPECS[key]
    assert level["shared memory"] < level["L2 cache"] < level[spec.memory_type]
    arrows = sorted((float(p.get_gid().split()[1]), _width(p)) for p in patches(fig, "bandwidth"))
    assert [bw for bw, _ in arrows] == sorted(b for b in (spec.bandwidth_GBps, spec.pcie_GBps,
                                                          spec.nvlink_GBps) if b is not None)
    widths = [w for _, w in arrows]
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_memory_hierarchy_missing_figures_are_not_given():
    text = joined(drawn("memory_hierarchy", spec=UNKNOWN))
    assert "bandwidth: not given" in text                  # HBM
    assert "PCIe: bandwidth" in text and "not given" in text
    assert "NVLink: not given" in text                     # unknown, not absent
    assert text.count("size: not given") >= 3              # registers, shared memory, L2
    assert "GB/s (" not in text


# ----------------------------------------------------------------------------
# The node
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", KEYS)
def test_node_parts_and_links(key):
    spec = hardware.SPECS[key]
    fig = drawn("node", spec=key)
    text = joined(fig)
    assert len(patches(fig, "GPU ")) == 8
    for part in ("GPU 0", "GPU 7", "CPU 0", "CPU 1", "DRAM", "NIC", "PCIe switch",
                 "CPU–CPU link", f"PCIe: {spec.pcie_GBps:g} GB/s per GPU (both directions)"):
        assert part in text, part
    if spec.nvlink_GBps is None:
        assert f"no NVLink on the {spec.name}" in text
    else:
        assert f"{spec.nvlink_GBps:g} GB/s per GPU (both directions)" in text
    assert ("NVSwitch" in text) == (spec.nvlink_GBps is not None and spec.form_factor != "PCIe"
                                    and spec.capability >= (8, 0))
    assert ("NVLink bridges" in text) == (spec.nvlink_GBps is not None
                                          and spec.form_factor == "PCIe")


@pytest.mark.parametrize("n", [1, 2, 3, 8, 16])
def test_node_draws_every_gpu(n):
    fig = diagrams.node(n)
    assert sorted(p.get_gid() for p in patches(fig, "GPU ")) == sorted(f"GPU {i}" for i in range(n))
    assert ("CPU 1" in texts(fig)) == (n >= 2)


@pytest.mark.parametrize("n", [0, 17, 2.0, True, "8"])
def test_node_refuses_bad_counts(n):
    with pytest.raises(ValueError, match="n_gpus must be"):
        diagrams.node(n)


def test_node_of_unknown_gpu():
    text = joined(drawn("node", spec=UNKNOWN))
    assert "NVLink: not given for this GPU" in text and "PCIe: bandwidth not given" in text


# ----------------------------------------------------------------------------
# The tiled matmul
# ----------------------------------------------------------------------------

def test_tiled_matmul_labels():
    text = joined(diagrams.tiled_matmul())
    for label in ("A (M × K) = 512 × 384", "B (K × N)", "C (M × N) = 512 × 768",
                  "this k-step's slabs: in shared memory (SRAM)", "accumulator: in registers",
                  "A, B, C: in HBM (global memory)", "walk along K →",
                  "program 5 computes tile (1, 2) of C; shown at k-step 3 of 6"):
        assert label in text, label


@pytest.mark.parametrize("M, N, BLOCK, GROUP_M", [(512, 768, 128, 2), (300, 500, 64, 3),
                                                   (1024, 256, 128, 8)])
def test_tiled_matmul_numbers_every_tile_once(M, N, BLOCK, GROUP_M):
    fig = diagrams.tiled_matmul(M, N, 256, BLOCK, BLOCK, 64, GROUP_M=GROUP_M, pid=0, k_step=0)
    numbers = sorted(int(t) for t in texts(fig) if re.fullmatch(r"\d+", t))
    assert numbers == list(range(-(-M // BLOCK) * -(-N // BLOCK)))


def test_grouped_ordering_is_the_kernels():
    """A bijection onto the tiles; GROUP_M = 1 is row-major; inside a group consecutive
    programs walk down the group's rows of tiles, then move one column right."""
    M, N, B = 700, 500, 64                      # 11 × 8 tiles: the last group is short
    n_m, n_n = 11, 8
    for group_m in (1, 2, 3, 4, 11, 50):
        tiles = [diagrams.grouped_pid_to_tile(p, M, N, B, B, group_m) for p in range(n_m * n_n)]
        assert sorted(tiles) == [(m, n) for m in range(n_m) for n in range(n_n)]
        if group_m == 1:
            assert tiles == [(m, n) for m in range(n_m) for n in range(n_n)]
        g = min(group_m, n_m)
        for p in range(g - 1):                  # the first group's first column
            assert tiles[p + 1] == (tiles[p][0] + 1, tiles[p][1])
        assert tiles[g] == (0, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(pid=24), r"pid must be an integer in \[0, 24\)"),
    (dict(pid=-1), "pid must be"),
    (dict(k_step=6), r"k_step must be an integer in \[0, 6\)"),
    (dict(BLOCK_K=0), "BLOCK_K must be a positive integer"),
    (dict(GROUP_M=0), "GROUP_M must be a positive integer"),
    (dict(M=512.0), "M must be a positive integer"),
])
def test_tiled_matmul_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        diagrams.tiled_matmul(**kwargs)


# ----------------------------------------------------------------------------
# FlashAttention's loop
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("S_q, S_k, BLOCK_M, BLOCK_N, causal", [
    (1024, 1024, 128, 128, True), (1024, 1024, 128, 128, False), (100, 300, 32, 64, True),
    (300, 200, 64, 32, True), (1, 4096, 16, 128, True), (2048, 2048, 128, 64, True),
])
def test_flash_attention_tiles_are_the_kernels(S_q, S_k, BLOCK_M, BLOCK_N, causal):
    fig = diagrams.flash_attention_loop(S_q, S_k, BLOCK_M, BLOCK_N, causal)
    drawn = {}
    for p in patches(fig, "tile "):
        _, m, n, kind = p.get_gid().split()
        drawn[int(m), int(n)] = kind
    expected = tile_map(S_q, S_k, BLOCK_M, BLOCK_N, causal)
    assert drawn == {(m, n): kind for m, row in enumerate(expected) for n, kind in enumerate(row)}
    text = joined(fig)
    counts = tile_counts(S_q, S_k, BLOCK_M, BLOCK_N, causal)
    assert f"full: no mask ({counts['full']})" in text
    assert f"masked ({counts['masked']})" in text
    assert f"skipped: never loaded ({counts['skipped']})" in text
    assert ("causal diagonal" in text) == causal


def test_flash_attention_loop_labels():
    text = joined(diagrams.flash_attention_loop())
    for label in ("Q_i: BLOCK_M × D, loaded once", "kept on chip (SRAM / registers)",
                  "running", "max", "sum", "acc", "BLOCK_M × D", "fp32",
                  "K_j, V_j: BLOCK_N × D each", "stream from HBM through SRAM, tile by tile",
                  "s     = Q_i K_jᵀ · sm_scale", "m_new = max(m, rowmax(s))",
                  "p     = exp(s − m_new)", "l     = α · l + rowsum(p)",
                  "acc   = α · acc + p V_j", "then O_i = acc / l → HBM, once",
                  "row of query tile i", "current K/V tile j"):
        assert label in text, label


@pytest.mark.parametrize("kwargs, match", [
    (dict(query_tile=8), r"query_tile must be an integer in \[0, 8\)"),
    (dict(key_tile=-1), r"key_tile must be an integer in \[0, 8\)"),
    (dict(S_q=0), "S_q must be a positive integer"),
    (dict(BLOCK_N=1.5), "BLOCK_N must be a positive integer"),
])
def test_flash_attention_loop_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        diagrams.flash_attention_loop(**kwargs)


@pytest.mark.parametrize("H, kv_heads", [(8, (8, 2, 1)), (16, (16, 8, 2, 1)), (12, (6, 3))])
def test_kv_head_groups_read_the_heads_the_kernel_reads(H, kv_heads):
    """Query head h reads K/V head h // (H / H_kv), as decode_attention indexes them: one arrow
    per query head, into its group's K/V head, which is as wide as the group."""
    fig = diagrams.kv_head_groups(H, kv_heads)
    for n in kv_heads:
        name = "MHA" if n == H else ("MQA" if n == 1 else f"GQA-{n}")
        G = H // n
        arrows = sorted(a.get_gid() for a in fig.findobj(
            lambda a: (a.get_gid() or "").startswith(f"{name} q") and "reads" in a.get_gid()))
        assert arrows == sorted(f"{name} q{h} reads kv{h // G}" for h in range(H))
        q_width = patches(fig, f"{name} q0")[0].get_width()
        for j in range(n):
            (box,) = [b for b in patches(fig, f"{name} kv{j}") if b.get_gid() == f"{name} kv{j}"]
            assert box.get_width() == pytest.approx(G * q_width + (G - 1) * 0.04)
        assert f"{name}" in texts(fig)


def test_kv_head_groups_say_what_is_cached():
    text = joined(diagrams.kv_head_groups(8, (8, 2, 1)))
    assert "KV cache: all of MHA's" in text and "KV cache: 1/4 of MHA's" in text
    assert "KV cache: 1/8 of MHA's" in text and "caches 2 K + 2 V per layer" in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(H=17), "at most 16"), (dict(H=0), "positive integer"),
    (dict(H=8, kv_heads=(3,)), "divide H=8"), (dict(H=8, kv_heads=()), "1 to 4"),
    (dict(H=8, kv_heads=(8, 4, 2, 1, 1)), "1 to 4"), (dict(H=8, kv_heads=8), "1 to 4"),
])
def test_kv_head_groups_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        diagrams.kv_head_groups(**kwargs)
