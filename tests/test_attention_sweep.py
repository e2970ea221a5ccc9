"""Tests of infer_lib.experiments.attention_sweep: without a GPU every measurement refuses and ``main`` exits 2;
the counts and the causal tile map agree with first principles and with the kernel; with a GPU a
tiny sweep gives positive, finite numbers; the shipped H100 file has the layout chapter 4 reads."""

import math

import pytest
import torch

from infer_lib.experiments import attention_sweep as sweep_mod
from infer_lib import device, measure, roofline
from infer_lib.experiments.attention_sweep import FLASH, IMPLS, NAIVE, SDPA

GPU_ONLY = [
    ("sweep", lambda: sweep_mod.sweep([64], B=1, H=2, D=16)),
    ("time_naive_steps", lambda: sweep_mod.time_naive_steps(64, B=1, H=2, D=16)),
    ("softmax_sweep", lambda: sweep_mod.softmax_sweep([64], total_bytes=2**12)),
    ("peak_extra_bytes", lambda: sweep_mod.peak_extra_bytes(lambda: None)),
    ("attention_sweep.run", lambda: sweep_mod.run((64,), steps_S=64)),
]


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ----------------------------------------------------------------------------
# Without a GPU: everything that would time must refuse
# ----------------------------------------------------------------------------

@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on machines without a GPU")
@pytest.mark.parametrize("what, call", GPU_ONLY, ids=[w for w, _ in GPU_ONLY])
def test_measurements_refuse_without_gpu(what, call):
    with pytest.raises(RuntimeError, match=rf"{what} needs a CUDA GPU"):
        call()


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on machines without a GPU")
def test_main_exits_2_without_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_mod.main(["--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "attention_sweep_h100_sxm.json" in err
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------
# Counts: run anywhere
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_attention_flops_are_the_naive_matmuls_useful_part(causal):
    # The naive version's two matmuls compute every score; the count keeps the useful ones.
    B, H, S, D = 2, 3, 48, 16
    matmuls = sum(op.flops for op in sweep_mod.naive_steps(B, H, S, D, torch.bfloat16, causal) if op.name in ("QKᵀ", "PV"))
    flops = roofline.attention_flops(B, H, S, S, D, causal)
    assert flops == (matmuls // 2 if causal else matmuls)


@pytest.mark.parametrize("causal", [False, True])
def test_naive_steps_count_each_kernel(causal):
    B, H, S, D, s = 2, 3, 48, 16, 2
    steps = sweep_mod.naive_steps(B, H, S, D, torch.bfloat16, causal)
    names = [op.name for op in steps]
    assert names == ["QKᵀ", "scale"] + (["mask"] if causal else []) + ["softmax", "PV"]
    by = {op.name: op for op in steps}
    n, scores = B * H, S * S
    assert by["QKᵀ"].flops == n * 2 * S * S * D
    assert by["QKᵀ"].bytes == n * (2 * S * D + scores) * s          # reads q, k; writes the scores
    assert by["scale"].bytes == n * 2 * scores * s                  # reads and writes the scores
    assert by["softmax"].bytes == n * 2 * scores * s
    assert by["PV"].bytes == n * (scores + 2 * S * D) * s           # reads P, v; writes the output
    if causal:
        assert by["mask"].bytes == n * 2 * scores * s + scores      # + the bool mask once
    # the score matrix is written once and read back by every later step: 2·(steps) − 2 passes
    passes = 6 + (2 if causal else 0)
    qkvo = 4 * n * S * D * s
    assert sum(op.bytes for op in steps) == passes * n * scores * s + qkvo + (scores if causal else 0)
    assert all(isinstance(op, roofline.Op) for op in steps)


def test_naive_steps_with_different_key_length():
    steps = sweep_mod.naive_steps(1, 2, 8, 16, "fp16", causal=False, S_k=32)
    assert steps[0].bytes == 2 * (8 * 16 + 16 * 32 + 8 * 32) * 2


def test_flash_bytes_and_peaks():
    assert sweep_mod.flash_bytes(1, 32, 4096, 4096, 128, torch.bfloat16) == 4 * 32 * 4096 * 128 * 2
    # GQA: k and v of H_kv heads only
    assert sweep_mod.flash_bytes(1, 32, 10, 20, 64, "fp16", H_kv=8) == (2 * 32 * 10 + 2 * 8 * 20) * 64 * 2
    assert sweep_mod.flash_peak_bytes(2, 4, 100, 300, 64, torch.float16) == 2 * 4 * 100 * 64 * 2
    full = sweep_mod.naive_peak_bytes(2, 4, 100, 300, 64, torch.float16, causal=False)
    assert full == 2 * 2 * 4 * 100 * 300 * 2 + 2 * 4 * 100 * 64 * 2
    assert sweep_mod.naive_peak_bytes(2, 4, 100, 300, 64, torch.float16, causal=True) == full + 2 * 100 * 300
    # quadratic in S: doubling S nearly quadruples it
    r = sweep_mod.naive_peak_bytes(1, 32, 8192, 8192, 128, "bf16", True) / \
        sweep_mod.naive_peak_bytes(1, 32, 4096, 4096, 128, "bf16", True)
    assert 3.9 < r < 4.0


def _brute_tile_map(S_q, S_k, BM, BN, causal):
    """What a tile needs, from the definition: query i sees key j ≤ i + S_k − S_q (and j < S_k)."""
    diag = S_k - S_q if causal else S_k
    out = []
    for m in range(math.ceil(S_q / BM)):
        rows = range(m * BM, min((m + 1) * BM, S_q))
        row = []
        for n in range(math.ceil(S_k / BN)):
            keys = range(n * BN, (n + 1) * BN)
            seen = [[j < S_k and j <= i + diag for j in keys] for i in rows]
            # "full" means no element needs a mask — judged on the tile's first row, as the kernel
            # does, and only where every key exists; the padded rows of a ragged tile see every key.
            first = m * BM
            full = all(j < S_k and j <= first + diag for j in keys)
            row.append(sweep_mod.FULL if full else sweep_mod.MASKED if any(map(any, seen))
                       else sweep_mod.SKIPPED)
        out.append(row)
    return out


@pytest.mark.parametrize("S_q, S_k", [(1, 1), (17, 33), (64, 64), (100, 100), (129, 1000), (256, 1024),
                                      (1000, 129), (33, 17), (300, 1000)])
@pytest.mark.parametrize("BM, BN", [(16, 16), (32, 64), (64, 32), (128, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_tile_map_matches_the_definition(S_q, S_k, BM, BN, causal):
    assert sweep_mod.tile_map(S_q, S_k, BM, BN, causal) == _brute_tile_map(S_q, S_k, BM, BN, causal)


def test_tile_counts():
    # 4 query tiles of 64 after a 768-token prefix: tile m runs key tiles 0..m+12, the last masked
    assert sweep_mod.tile_counts(256, 1024, 64, 64) == {"full": 54, "masked": 4, "skipped": 6}
    assert sweep_mod.tile_counts(1024, 1024, 128, 64, causal=False) == {"full": 128, "masked": 0, "skipped": 0}
    with pytest.raises(ValueError, match="BLOCK_N must be a positive integer"):
        sweep_mod.tile_map(10, 10, 16, 0)


@pytest.mark.skipif(not device.INTERPRET, reason="the interpreter's tile is fixed (_tuning.FLASH_ATTENTION.interpreter); "
                                                "on a GPU the launcher autotunes")
@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")   # query tile 1 reads the NaN, as it must
def test_the_kernel_never_reads_skipped_tiles():
    """NaN in the key/value tiles that tile_map says query tile 0 skips must not reach its output
    (a loaded NaN value would: 0 · NaN = NaN in p @ v, even where p is masked to 0)."""
    from infer_lib.kernels import flash_attention
    from infer_lib.kernels._tuning import FLASH_ATTENTION
    INTERPRETER_CONFIG = FLASH_ATTENTION.interpreter
    from infer_lib.reference import attention_ref

    BM, BN = INTERPRETER_CONFIG.kwargs["BLOCK_M"], INTERPRETER_CONFIG.kwargs["BLOCK_N"]
    S_q, S_k, D = 2 * BM, 5 * BN, 16
    q, k, v = torch.randn(1, 1, S_q, D), torch.randn(1, 1, S_k, D), torch.randn(1, 1, S_k, D)
    want = attention_ref(q, k, v, causal=True)
    skipped = [n for n, t in enumerate(sweep_mod.tile_map(S_q, S_k, BM, BN)[0]) if t == sweep_mod.SKIPPED]
    assert skipped
    for n in skipped:
        k[..., n * BN:(n + 1) * BN, :] = float("nan")
        v[..., n * BN:(n + 1) * BN, :] = float("nan")
    got = flash_attention(q, k, v, causal=True)
    torch.testing.assert_close(got[..., :BM, :], want[..., :BM, :])
    assert got[..., BM:, :].isnan().all()   # query tile 1 does see them


@pytest.mark.parametrize("name", sorted(device.PROFILES))
def test_sizes_for_every_profile(name):
    prof = device.PROFILES[name]
    sz = prof.attention
    assert sz.checks
    for B, H, H_kv, S_q, S_k, D, causal in sz.checks:
        assert H % H_kv == 0 and D in (16, 32, 64, 128) and isinstance(causal, bool)
    if prof.live:
        assert list(sz.sweep.seq_lens) == sorted(sz.sweep.seq_lens)
        assert sz.steps_S and sz.softmax_widths and sz.softmax_bytes > 0
    else:
        assert sz.sweep is None and not sz.softmax_widths


def _good_doc():
    return {"provenance": measure.provenance(), "params": dict(sweep_mod.PARAMS),
            "records": [{"S": 512, "impl": impl, "us": 1.0, "TFLOPs": 1.0, "peak_bytes": 10} for impl in IMPLS],
            "naive_steps": {"S": 512, "records": [{"step": "QKᵀ", "flops": 1, "bytes": 2, "us": 1.0}]}}


def _more(doc, impl):
    doc["records"].append({"S": 1024, "impl": impl, "us": 1.0, "TFLOPs": 1.0, "peak_bytes": 10})


@pytest.mark.parametrize("breakage, message", [
    (lambda d: _more(d, FLASH), "SDPA must be measured at every S"),
    (lambda d: _more(d, SDPA), "triton flash_attention must be measured at every S"),
    (lambda d: d["records"][0].update(us=float("nan")), r"records\[0\].us must be a finite number > 0"),
    (lambda d: d["records"][0].update(impl="cuDNN"), "impl 'cuDNN' not one of"),
    (lambda d: d.pop("params"), "missing top-level key 'params'"),
    (lambda d: d["params"].pop("causal"), "params lacks 'causal'"),
    (lambda d: d["naive_steps"]["records"][0].pop("step"), r"naive_steps.records\[0\] lacks 'step'"),
    (lambda d: d["naive_steps"]["records"][0].update(us=-1.0), r"naive_steps.records\[0\].us must be"),
])
def test_validate_catches_bad_files(breakage, message):
    sweep_mod.validate(_good_doc())
    doc = _good_doc()
    breakage(doc)
    with pytest.raises(ValueError, match=message):
        sweep_mod.validate(doc)


def test_naive_steps_are_optional_in_a_file():
    doc = _good_doc()
    del doc["naive_steps"]
    sweep_mod.validate(doc)


# ----------------------------------------------------------------------------
# On a GPU: tiny runs give positive, finite numbers
# ----------------------------------------------------------------------------

@pytest.mark.skipif(not device.HAS_GPU, reason="timing and peak memory need a CUDA GPU")
def test_tiny_sweep_on_gpu():
    skipped = []
    records = sweep_mod.sweep([128, 256], B=1, H=2, D=64, causal=True, skipped=skipped)
    assert {(r["S"], r["impl"]) for r in records} == {(S, i) for S in (128, 256) for i in IMPLS}
    for r in records:
        assert all(_finite_positive(r[k]) for k in ("us", "TFLOPs", "peak_bytes")), r
    assert not skipped
    steps = sweep_mod.time_naive_steps(128, B=1, H=2, D=64)
    assert [s["step"] for s in steps] == ["QKᵀ", "scale", "mask", "softmax", "PV"]
    assert all(_finite_positive(s["us"]) for s in steps)
    sm = sweep_mod.softmax_sweep([256, 1024], total_bytes=2**20)
    assert {(r["impl"], r["width"]) for r in sm} == {(i, w) for i in ("triton softmax", "torch.softmax", sweep_mod.COPY)
                                                     for w in (256, 1024)}
    assert all(_finite_positive(r["GBps"]) for r in sm)


@pytest.mark.skipif(not device.HAS_GPU, reason="timing and peak memory need a CUDA GPU")
def test_main_writes_a_valid_file_on_gpu(tmp_path):
    sweep_mod.main(["--out-dir", str(tmp_path), "--seq-lens", "128", "256"])
    path = tmp_path / f"attention_sweep_{measure.gpu_key()}.json"
    import json
    doc = json.loads(path.read_text())
    sweep_mod.validate(doc)
    assert doc["naive_steps"]["records"]


# ----------------------------------------------------------------------------
# The shipped reference measurement
# ----------------------------------------------------------------------------

_SHIPPED = measure.reference_path("attention_sweep")


@pytest.mark.skipif(not _SHIPPED.exists(), reason=f"{_SHIPPED.name} is not shipped yet (written on an H100 "
                                                  "by python -m infer_lib.experiments.attention_sweep)")
def test_shipped_file_has_the_expected_layout():
    doc = measure.load_reference("attention_sweep")
    sweep_mod.validate(doc)
    assert doc["provenance"]["gpu_key"] == measure.REFERENCE_GPU
    assert doc["params"]["causal"] is True and doc["params"]["dtype"] in ("bfloat16", "float16")
    seq = sorted({r["S"] for r in doc["records"]})
    assert seq[0] <= 1024 and seq[-1] >= 8192, seq
    naive = [r for r in doc["records"] if r["impl"] == NAIVE]
    assert naive, "the naive version should fit at the small sizes at least"
    for r in doc["records"]:
        assert r["TFLOPs"] < 2000, r   # below any datasheet peak
    # memory: naive grows ~quadratically, the fused kernels linearly
    flash = {r["S"]: r["peak_bytes"] for r in doc["records"] if r["impl"] == FLASH}
    assert flash[seq[-1]] / flash[seq[0]] <= 1.5 * seq[-1] / seq[0]
    n = {r["S"]: r["peak_bytes"] for r in naive}
    s_lo, s_hi = min(n), max(n)
    if s_hi > s_lo:
        assert n[s_hi] / n[s_lo] > 0.5 * (s_hi / s_lo) ** 2
    assert {r["impl"] for r in doc["records"]} == set(IMPLS)
