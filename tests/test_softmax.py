import pytest
import torch

from conftest import DTYPES, GPU_ONLY, IEEE_WARNINGS_EXPECTED, TOLERANCES, assert_close_with_nans
from infer_lib import device
from infer_lib.kernels import _tuning
from infer_lib.kernels import softmax_kernel
from infer_lib.kernels.softmax_kernel import MAX_FUSED_BLOCK, softmax, softmax_ref

DEV = device.DEVICE
INF, NAN = float("inf"), float("nan")
ONLINE_BLOCK = _tuning.SOFTMAX_ONLINE.kwargs["BLOCK"]   # entries per step of the online kernel's loop

ONE_ROW, SEVERAL_ROWS, ONLINE = "one row per tile", "several rows per tile", "online"
PERSISTENT = "persistent, one row per step"


def _path(width: int, dtype: torch.dtype) -> str:
    """Which kernel (and tiling) ``softmax`` runs for rows of this width, as the launcher decides."""
    if width > MAX_FUSED_BLOCK:
        return ONLINE
    cfg = _tuning.softmax_config(width, torch.finfo(dtype).bits // 8)
    if cfg.num_stages > 1:
        return PERSISTENT
    return ONE_ROW if cfg.kwargs["ROWS"] == 1 else SEVERAL_ROWS


def _first_width(path: str, candidates=(213, 257, 423, 1001, 5001, 20001, 32769, 40001)) -> int:
    """The first odd, non-power-of-two width that takes ``path`` in every dtype."""
    for w in candidates:
        if all(_path(w, dt) == path for dt in device.kernel_dtypes()):
            return w
    raise AssertionError(f"none of the widths {candidates} takes the {path} path in every dtype; "
                         "the test needs new widths for the current softmax_config")


# Odd, non-power-of-two shapes with odd leading dims; each path of the launcher
# gets several (test_shapes_reach_every_path checks it against softmax_config).
SHAPES = [(1,), (5, 7), (37, 213), (3, 43, 213), (2, 1, 3, 4, 257),     # several rows per tile
          (3, 5001), (4, 9001),                                           # one row per tile
          (2, 3, 20001), (7, 32767),      # persistent (16-bit; every dtype in the interpreter)
          (1, 32769), (2, 40001)]                                         # online: last block 1 or 7233 wide


def test_shapes_reach_every_path():
    for dtype in device.kernel_dtypes():
        paths = [_path(shape[-1], dtype) for shape in SHAPES]
        for path in (ONE_ROW, SEVERAL_ROWS, ONLINE):
            assert paths.count(path) >= 2, f"{dtype}: SHAPES has fewer than two shapes on the {path} path"
        if _path(MAX_FUSED_BLOCK, dtype) == PERSISTENT:
            assert paths.count(PERSISTENT) >= 2, f"{dtype}: SHAPES has fewer than two persistent shapes"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(shape, dtype, poisoned_outputs):
    x = 3 * torch.randn(shape, device=DEV, dtype=dtype)
    out = softmax(x)
    atol, rtol = TOLERANCES[dtype]
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, softmax_ref(x), atol=atol, rtol=rtol)
    torch.testing.assert_close(out, torch.softmax(x, dim=-1), atol=atol, rtol=rtol)
    rows = x.numel() // shape[-1]
    torch.testing.assert_close(out.float().sum(-1).flatten(), torch.ones(rows, device=DEV), atol=1e-2, rtol=0)


# ----------------------------------------------------------------------------
# NaN and ±inf: the same answer as torch.softmax, in every row
# ----------------------------------------------------------------------------

def _nan(row, p, span):
    row[p] = NAN


def _pos_inf(row, p, span):
    row[p] = INF


def _neg_inf_span(row, p, span):        # masked entries; the rest of the row stays finite
    row[span] = -INF


def _only_finite_at_p(row, p, span):    # masked everywhere but p: probability 1 there
    row[:] = -INF
    row[p] = 2.0


def _nan_among_neg_inf(row, p, span):
    row[:] = -INF
    row[p] = NAN


def _pos_inf_among_neg_inf(row, p, span):
    row[:] = -INF
    row[p] = INF


def _all_neg_inf(row, p, span):         # fully masked: torch.softmax gives NaN (0/0)
    row[:] = -INF


CASES = {"nan": _nan, "+inf": _pos_inf, "-inf span": _neg_inf_span, "only p finite": _only_finite_at_p,
         "nan among -inf": _nan_among_neg_inf, "+inf among -inf": _pos_inf_among_neg_inf,
         "all -inf": _all_neg_inf}


def _with_cases(x: torch.Tensor, rows: list[int], p: int, span: slice) -> dict[int, str]:
    """Write the special cases into ``rows`` of the 2-D ``x`` (column ``p``, masked ``span``)."""
    labels = {}
    for r, (name, write) in zip(rows, CASES.items()):
        write(x[r], p, span)
        labels[r] = f"{name} at column {p}"
    return labels


def _assert_like_torch(out: torch.Tensor, x: torch.Tensor, labels: dict[int, str]) -> None:
    """``out`` is ``torch.softmax(x)`` on the same input: NaN in the same places, close elsewhere,
    and exactly 0 for the -inf entries of rows that keep a finite entry."""
    expected = torch.softmax(x, dim=-1)
    atol, rtol = TOLERANCES[x.dtype]
    assert_close_with_nans(out, expected, atol, rtol, labels)
    masked = (x == -INF) & ~expected.isnan()
    assert (out[masked] == 0).all(), "a -inf entry of a row with finite entries must get probability exactly 0"


def _special_input(width: int, dtype: torch.dtype, p: int, span: slice,
                   between: bool = True) -> tuple[torch.Tensor, dict]:
    """Every special case in its own row of a random ``x``, with random rows ``between`` them
    (2·len(CASES) + 1 rows: a tile holds special and random rows side by side, and the last
    tile has padding rows) or one random row first (the online kernel: a program per row)."""
    n_rows = 2 * len(CASES) + 1 if between else len(CASES) + 1
    x = 3 * torch.randn(n_rows, width, device=DEV, dtype=dtype)
    rows = list(range(1, n_rows, 2)) if between else list(range(1, n_rows))
    return x, _with_cases(x, rows, p, span)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("where", ["first column", "middle column", "last column"])
@pytest.mark.parametrize("path", [SEVERAL_ROWS, ONE_ROW, PERSISTENT])
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_one_pass(dtype, path, where, poisoned_outputs):
    # A non-power-of-two width: the tile has masked padding columns right after
    # the last column, and padding rows after the last row.
    if path == PERSISTENT:
        if _path(MAX_FUSED_BLOCK, dtype) != PERSISTENT:
            pytest.skip(f"{dtype} rows do not take the persistent path on this device")
        width = 20_001
        assert _path(width, dtype) == PERSISTENT
    else:
        width = _first_width(path)
    p = {"first column": 0, "middle column": width // 2, "last column": width - 1}[where]
    x, labels = _special_input(width, dtype, p, slice(p, p + 1))
    _assert_like_torch(softmax(x), x, labels)


def _online_places(width: int) -> dict[str, tuple[int, slice]]:
    """A column ``p`` and a masked span (a whole block) in the online kernel's first block, a
    middle block and the ragged last block of a row of ``width``; ``p`` is the last column there."""
    n_blocks = -(-width // ONLINE_BLOCK)
    assert width > MAX_FUSED_BLOCK and n_blocks >= 3 and width % ONLINE_BLOCK, \
        f"width {width} must take the online kernel with a first, a middle and a ragged last block"
    places = {}
    for where, block in (("first block", 0), ("middle block", n_blocks // 2), ("last block", n_blocks - 1)):
        start = block * ONLINE_BLOCK
        span = slice(start, min(start + ONLINE_BLOCK, width))
        places[where] = (width - 1 if block == n_blocks - 1 else start + ONLINE_BLOCK // 3, span)
    return places


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("where", ["first block", "middle block", "last block"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_online(dtype, where, poisoned_outputs):
    width = 40_001
    p, span = _online_places(width)[where]
    x, labels = _special_input(width, dtype, p, span, between=False)
    _assert_like_torch(softmax(x), x, labels)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_torch_softmax(dtype):
    x, labels = _special_input(9, dtype, 4, slice(2, 5))
    x = torch.cat([x, 5 * torch.randn(5, 9, device=DEV, dtype=dtype)])
    atol, rtol = TOLERANCES[dtype]
    assert_close_with_nans(softmax_ref(x), torch.softmax(x, dim=-1), atol, rtol, labels)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype", DTYPES)
def test_persistent_launch_covers_every_tile(dtype, poisoned_outputs):
    # The launcher the tuning tool times: a grid capped at 2 programs makes each
    # one loop over several tiles of 4 rows, prefetching the next (num_stages=2).
    x, labels = _special_input(213, dtype, 212, slice(212, 213))
    out = torch.empty_like(x)
    block = _tuning.softmax_config(213, x.element_size()).kwargs["BLOCK"]
    softmax_kernel._launch_fused(x, out, block, rows=4, num_warps=4, num_stages=2, programs=2)
    _assert_like_torch(out, x, labels)


@pytest.mark.parametrize("width", [7, 213, 5001, 40_001])
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_masks(width, dtype, poisoned_outputs):
    n_rows = 37 if _path(width, dtype) == SEVERAL_ROWS else 3     # several tiles, or a few rows
    x = torch.randn(n_rows, width, device=DEV, dtype=dtype)
    masked = torch.rand(n_rows, width, device=DEV) < 0.5
    masked[torch.arange(n_rows), torch.randint(width, (n_rows,))] = False   # every row keeps an entry
    x = x.masked_fill(masked, -INF)
    out = softmax(x)
    assert not out.isnan().any()
    _assert_like_torch(out, x, {})


@pytest.mark.parametrize("width", [7, 5001, 40_001])
@pytest.mark.parametrize("dtype, magnitude", [
    pytest.param(torch.float32, 1e4, id="float32-1e4"),
    pytest.param(torch.float16, 6e4, id="float16-6e4"),
    pytest.param(torch.bfloat16, 1e30, id="bfloat16-1e30"),
])
def test_large_magnitudes_do_not_overflow(width, dtype, magnitude):
    if dtype not in device.kernel_dtypes():
        pytest.skip(f"{dtype} is not supported on this GPU")
    x = (magnitude * (2 * torch.rand(3, width, device=DEV) - 1)).to(dtype)
    x[:, 1 % width] = magnitude                  # a large maximum in every row
    out = softmax(x)
    assert torch.isfinite(out).all()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out, torch.softmax(x, dim=-1), atol=atol, rtol=rtol)
    torch.testing.assert_close(out.float().sum(-1), torch.ones(3, device=DEV), atol=1e-2, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows(dtype, poisoned_outputs):
    atol, rtol = TOLERANCES[dtype]
    base = torch.randn(6, 5, 300, device=DEV, dtype=dtype)
    x = base[::2, :, :257]                      # (3, 5, 257), row stride 300
    torch.testing.assert_close(softmax(x), torch.softmax(x, dim=-1), atol=atol, rtol=rtol)
    y = base.transpose(0, 1)                    # (5, 6, 300): leading dims do not merge into one stride
    torch.testing.assert_close(softmax(y), torch.softmax(y, dim=-1), atol=atol, rtol=rtol)


def test_empty():
    assert softmax(torch.empty(0, 5, device=DEV)).shape == (0, 5)
    assert softmax(torch.empty(3, 0, device=DEV)).shape == (3, 0)


# ----------------------------------------------------------------------------
# Inputs the launcher refuses
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error, message", [
    (lambda: torch.arange(10, device=DEV), TypeError, "dtype int64; supported dtypes are float32, float16, bfloat16"),
    (lambda: torch.tensor(1.0, device=DEV), ValueError, "x is 0-d"),
    (lambda: [[1.0, 2.0]], TypeError, "x must be a torch.Tensor, got list"),
    (lambda: torch.randn(8, 8, device=DEV).t(), ValueError, "last dimension of x must be contiguous"),
], ids=["int", "0-d", "list", "column-major"])
def test_bad_input(bad, error, message):
    with pytest.raises(error, match=message):
        softmax(bad())


def test_requires_grad_is_refused():
    x = torch.randn(3, 7, device=DEV, requires_grad=True)
    with pytest.raises(RuntimeError, match="x requires grad.*inference kernel.*no_grad"):
        softmax(x)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_requires_grad_runs_without_grad_mode(mode, poisoned_outputs):
    x = torch.randn(3, 7, device=DEV, requires_grad=True)
    with mode():
        out = softmax(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, torch.softmax(x.detach(), dim=-1))


@pytest.mark.skipif(device.HAS_GPU, reason="checks the CPU-only message")
def test_non_cpu_tensor_without_gpu_is_refused():
    with pytest.raises(ValueError, match="is on meta"):
        softmax(torch.randn(4, device="meta"))


# ----------------------------------------------------------------------------
# Compiled kernels (GPU only): every configuration, wide rows, many rows
# ----------------------------------------------------------------------------

def _every_config() -> list:
    """One case per (dtype, configuration softmax_config can return): the narrowest and the widest
    odd width that select it, found by asking softmax_config for every width it serves."""
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        widths: dict[tuple, list[int]] = {}
        for w in range(1, MAX_FUSED_BLOCK + 1):
            cfg = _tuning.softmax_config(w, torch.finfo(dtype).bits // 8)
            key = (cfg.kwargs["BLOCK"], cfg.kwargs["ROWS"], cfg.num_warps, cfg.num_stages)
            widths.setdefault(key, []).append(w)
        for (block, rows, warps, stages), ws in widths.items():
            odd = [w for w in ws if w % 2] or ws
            for w in sorted({odd[0], odd[-1]}):
                cases.append(pytest.param(dtype, w, rows, id=f"{str(dtype)[6:]}-{w}-BLOCK{block}-ROWS{rows}"
                                                             f"-warps{warps}-stages{stages}"))
    return cases


def _rows_with_cases(x: torch.Tensor, p: int, span: slice) -> dict[int, str]:
    """Spread the special cases over the rows of a tall ``x`` (first, middle and last rows among them)."""
    n = x.shape[0]
    assert n >= len(CASES)
    return _with_cases(x, [round(i * (n - 1) / (len(CASES) - 1)) for i in range(len(CASES))], p, span)


@GPU_ONLY
@pytest.mark.parametrize("dtype, width, rows_per_tile", _every_config())
def test_every_config_on_gpu(dtype, width, rows_per_tile, poisoned_outputs):
    if dtype not in device.kernel_dtypes():
        pytest.skip(f"{dtype} is not supported on this GPU")
    for n_rows in (1, 7, 3 * rows_per_tile + 1, 1001):
        x = 3 * torch.randn(n_rows, width, device=DEV, dtype=dtype)
        labels = _rows_with_cases(x, width - 1, slice(0, 1)) if n_rows >= len(CASES) else {}
        _assert_like_torch(softmax(x), x, labels)


@GPU_ONLY
@pytest.mark.parametrize("width", [MAX_FUSED_BLOCK + 1, 40_001, 70_000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_online_widths_on_gpu(dtype, width, poisoned_outputs):
    for n_rows in (1, 7, 129):
        x = 3 * torch.randn(n_rows, width, device=DEV, dtype=dtype)
        labels = {}
        if n_rows == 129:   # every case in the first, a middle and the ragged last block, between random rows
            for i, (p, span) in enumerate(_online_places(width).values()):
                rows = [1 + 2 * (i * len(CASES) + k) for k in range(len(CASES))]
                labels.update(_with_cases(x, rows, p, span))
        _assert_like_torch(softmax(x), x, labels)


@GPU_ONLY
@pytest.mark.parametrize("dtype", DTYPES)
def test_many_rows_on_gpu(dtype, poisoned_outputs):
    # 131072 rows of 1024: a large grid of multi-row tiles, special rows at both ends and in the middle.
    x = 3 * torch.randn(131_072, 1024, device=DEV, dtype=dtype)
    labels = _rows_with_cases(x, 1023, slice(0, 512))
    _assert_like_torch(softmax(x), x, labels)
    # The persistent launch: a grid of one program per SM, each looping over many tiles.
    out = torch.empty_like(x)
    cfg = _tuning.softmax_config(1024, x.element_size())
    softmax_kernel._launch_fused(x, out, cfg.kwargs["BLOCK"], cfg.kwargs["ROWS"], cfg.num_warps, num_stages=2,
                                 programs=torch.cuda.get_device_properties(DEV).multi_processor_count)
    _assert_like_torch(out, x, labels)


@GPU_ONLY
def test_new_row_count_does_not_recompile():
    # n_rows is not specialised: 1, 16, 17 and 1000 rows share one compiled kernel.
    kernel = softmax_kernel._softmax_kernel
    if not hasattr(kernel, "device_caches"):
        pytest.skip("this Triton's JITFunction has no device_caches to count compiled kernels")
    softmax(torch.randn(3, 1000, device=DEV))
    compiled = kernel.device_caches[torch.cuda.current_device()][0]
    before = len(compiled)
    for n_rows in (1, 16, 17, 1000):
        softmax(torch.randn(n_rows, 1000, device=DEV))
    assert len(compiled) == before, f"{len(compiled) - before} new compilations for new row counts"
