"""Tests of infer_lib.kernels._tuning: the one mechanism that picks every kernel's configuration."""

import ast
import inspect

import pytest
import torch
import triton

from infer_lib import device
from infer_lib.kernels import _tuning

ALL = [_tuning.MATMUL, _tuning.SPLITK_MATMUL, _tuning.FLASH_ATTENTION, _tuning.FLASH_ATTENTION_FP32,
       _tuning.DECODE_ATTENTION, _tuning.INT8_MATMUL]
CAPABILITIES = [(7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]
#: shared memory per block the driver reports (bytes): V100, T4, A100, RTX 30, L4, H100, B200, RTX 50
SMEM = {(7, 0): 98304, (7, 5): 65536, (8, 0): 166912, (8, 6): 101376, (8, 9): 101376,
        (9, 0): 232448, (10, 0): 232448, (12, 0): 101376}


def test_imports_nothing_above_the_kernels():
    tree = ast.parse(inspect.getsource(_tuning))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
            imported.update(f"{'.' * node.level}{node.module or ''}:{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    relative = {m for m in imported if m.startswith(".")}
    assert relative <= {"..", "..:device"}, relative      # only infer_lib.device, below the kernels


@pytest.mark.parametrize("n, want", [(1, 1), (2, 2), (3, 4), (17, 32), (1000, 1024), (1024, 1024), (1025, 2048)])
def test_bucket_is_the_next_power_of_two(n, want):
    assert _tuning.bucket(n) == want


def test_lengths_of_one_bucket_share_it_and_neighbours_do_not():
    assert len({_tuning.bucket(n) for n in range(513, 1025)}) == 1
    assert _tuning.bucket(1024) != _tuning.bucket(1025)


@pytest.mark.parametrize("cap, cls", [((9, 0), "hopper"), ((10, 0), "hopper"), ((8, 0), "ampere"),
                                       ((8, 6), "small_smem"), ((7, 5), "small_smem"), ((12, 0), "small_smem"),
                                       (None, "interpreter")])
def test_architecture_classes(cap, cls):
    assert _tuning.arch_class(cap) == cls


@pytest.mark.parametrize("configs", ALL, ids=lambda c: c.name)
@pytest.mark.parametrize("cap", CAPABILITIES, ids=lambda c: f"sm_{c[0]}{c[1]}")
@pytest.mark.parametrize("esize", [2, 4])
def test_candidates_fit_the_shared_memory_and_are_never_empty(configs, cap, esize):
    shape = {"M": 4096, "N": 4096, "D": 128}
    got = configs.candidates(cap, SMEM[cap], esize, shape)
    assert got
    assert all(configs.smem_bytes(c, esize, shape) <= SMEM[cap] for c in got) or got == [configs.fallbacks[-1]]


@pytest.mark.parametrize("cap", CAPABILITIES, ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_a_tiny_shared_memory_leaves_the_fixed_choice(cap):
    shape = {"M": 4096, "N": 4096}
    assert _tuning.MATMUL.candidates(cap, 1024, 2, shape) == [_tuning.MATMUL.fixed(2, shape, 1024)]


def test_skinny_problems_drop_tiles_much_taller_than_the_problem():
    full = _tuning.MATMUL.candidates((9, 0), SMEM[(9, 0)], 2, {"M": 8192, "N": 8192})
    skinny = _tuning.MATMUL.candidates((9, 0), SMEM[(9, 0)], 2, {"M": 16, "N": 8192})
    assert skinny and set(map(str, skinny)) < set(map(str, full))
    assert max(c.kwargs["BLOCK_M"] for c in skinny) < max(c.kwargs["BLOCK_M"] for c in full)


@pytest.mark.parametrize("configs", ALL, ids=lambda c: c.name)
@pytest.mark.parametrize("limit", [48 * 1024, 64 * 1024, 100 * 1024, 227 * 1024])
def test_fixed_choice_on_a_gpu_respects_its_shared_memory(configs, limit, monkeypatch):
    monkeypatch.setattr(_tuning.device, "INTERPRET", False)     # what a GPU of that size would run
    for esize, D in ((2, 64), (2, 128), (4, 128)):
        shape = {"M": 8, "N": 8, "D": D}
        cfg = configs.fixed(esize, shape, limit)
        assert cfg in configs.fallbacks
        assert configs.smem_bytes(cfg, esize, shape) <= limit


@pytest.mark.skipif(not device.INTERPRET, reason="the interpreter's choice; a GPU tunes or takes a fallback")
def test_the_interpreter_never_times_and_runs_its_own_tiles():
    calls = []
    for configs in ALL:
        cfg = configs.choose(("key",), calls.append, tune=True, element_size=2, shape={"M": 1, "N": 1, "D": 16})
        assert cfg is configs.interpreter
        assert not configs.cache
    assert not calls                                   # nothing launched for timing


def _config(**kw):
    kw.setdefault("num_warps", 4)
    kw.setdefault("num_stages", 2)
    warps, stages = kw.pop("num_warps"), kw.pop("num_stages")
    return triton.Config(kw, num_warps=warps, num_stages=stages)


GOOD = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8)


@pytest.mark.parametrize("change, match", [
    (dict(BLOCK_M=48), "BLOCK_M=48 must be a power of two"),
    (dict(BLOCK_K=8), "BLOCK_K=8 must be a power of two ≥ 16"),
    (dict(BLOCK_N=0), "BLOCK_N=0"),
    (dict(BLOCK_N=64.0), "BLOCK_N=64.0"),
    (dict(GROUP_M=0), "GROUP_M=0 must be an integer ≥ 1"),
    (dict(GROUP_M=True), "GROUP_M=True"),
    (dict(num_warps=3), "num_warps=3"),
    (dict(num_warps=64), "num_warps=64"),
    (dict(num_stages=0), "num_stages=0"),
])
def test_check_config_names_the_bad_value(change, match):
    with pytest.raises(ValueError, match=match):
        _tuning.check_config("matmul", _config(**{**GOOD, **change}), _tuning.MATMUL_BLOCKS, _tuning.MATMUL_COUNTS)


def test_check_config_names_missing_keys_and_wrong_types():
    with pytest.raises(ValueError, match="lacks GROUP_M"):
        _tuning.check_config("matmul", _config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32),
                             _tuning.MATMUL_BLOCKS, _tuning.MATMUL_COUNTS)
    with pytest.raises(TypeError, match="triton.Config"):
        _tuning.check_config("matmul", dict(GOOD), _tuning.MATMUL_BLOCKS, _tuning.MATMUL_COUNTS)
    _tuning.check_config("matmul", _config(**GOOD), _tuning.MATMUL_BLOCKS, _tuning.MATMUL_COUNTS)


@pytest.mark.parametrize("configs", ALL, ids=lambda c: c.name)
def test_every_listed_config_passes_its_own_checks(configs):
    blocks = {k: 16 for k in configs.interpreter.kwargs if k.startswith("BLOCK")}
    counts = tuple(k for k in configs.interpreter.kwargs if not k.startswith("BLOCK"))
    for cfg in [c for lst in configs.lists.values() for c in lst] + configs.fallbacks + [configs.interpreter]:
        _tuning.check_config(configs.name, cfg, blocks, counts)


@pytest.mark.parametrize("n_cols", [1, 7, 100, 1000, 1024, 4097, 32768])
@pytest.mark.parametrize("esize", [2, 4])
def test_softmax_tile_holds_whole_rows(n_cols, esize):
    cfg = _tuning.softmax_config(n_cols, esize)
    _tuning.check_config("softmax", cfg, {"BLOCK": 16, "ROWS": 1})
    assert cfg.kwargs["BLOCK"] >= n_cols


@pytest.mark.skipif(not device.HAS_GPU, reason="max_shared_memory asks the driver; without a GPU there is no limit")
def test_shared_memory_query_matches_torch():
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    want = getattr(props, "shared_memory_per_block_optin", None)
    got = _tuning.max_shared_memory()
    assert got > 0 and (want is None or got == want)
