import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from infer_lib import hardware, plotting, roofline  # noqa: E402
from infer_lib.hardware import SPECS  # noqa: E402

# ----------------------------------------------------------------------------
# Critical batch size and machine balance, against figures worked by hand
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("key, expected", [
    ("a100_40gb", 312e12 / 1555e9),   # 200.6: the seed's "B ≈ 200"
    ("a100_80gb", 312e12 / 2039e9),   # 153.0
    ("h100_sxm", 989.5e12 / 3350e9),  # 295.4
])
def test_critical_batch_size_16_bit(key, expected):
    for dtype in (torch.bfloat16, torch.float16, "bf16"):
        assert roofline.critical_batch_size(SPECS[key], dtype) == pytest.approx(expected, rel=1e-12)


def test_critical_batch_size_rounds_to_the_quoted_figures():
    assert round(roofline.critical_batch_size(SPECS["a100_40gb"])) == 201
    assert 195 <= roofline.critical_batch_size(SPECS["a100_40gb"]) <= 205
    assert round(roofline.critical_batch_size(SPECS["a100_80gb"])) == 153
    assert round(roofline.critical_batch_size(SPECS["h100_sxm"])) == 295


def test_critical_batch_size_is_machine_balance_in_16_bit():
    for spec in (SPECS["a100_40gb"], SPECS["h100_sxm"], SPECS["l4"]):
        assert roofline.critical_batch_size(spec) == pytest.approx(roofline.machine_balance(spec))


def test_critical_batch_size_fp32_uses_4_byte_weights_and_the_fp32_peak():
    # A100 plain FP32: 19.5 TFLOP/s · 4 B / (2 · 1555 GB/s) = 25.08
    assert roofline.critical_batch_size(SPECS["a100_40gb"], torch.float32) == pytest.approx(19.5e12 * 4 / (2 * 1555e9))


def test_critical_batch_size_from():
    assert roofline.critical_batch_size_from(312e12, 1555e9, 2) == pytest.approx(200.643, rel=1e-5)
    # fp8 weights halve it, fp32 weights double it (same peak, same bandwidth)
    assert roofline.critical_batch_size_from(100.0, 1.0, 1) == 50.0
    assert roofline.critical_batch_size_from(100.0, 1.0, 4) == 200.0


def test_machine_balance_h100():
    assert roofline.machine_balance(SPECS["h100_sxm"], torch.bfloat16) == pytest.approx(295.373, rel=1e-5)
    assert roofline.ceilings(SPECS["h100_sxm"]) == (989.5e12, 3350e9)


def test_no_bf16_on_a_t4():
    with pytest.raises(ValueError, match="no bf16 tensor-core peak"):
        roofline.critical_batch_size(SPECS["t4"], torch.bfloat16)
    assert roofline.critical_batch_size(SPECS["t4"], torch.float16) == pytest.approx(65e12 / 300e9)


def test_unknown_bandwidth_is_refused():
    spec = hardware.GPUSpec(
        key="x", name="Mystery GPU", architecture=None, compute_capability="9.0", year=None,
        form_factor=None, sms=1, memory_GB=1.0, memory_type=None, bandwidth_GBps=None,
        fp32_TFLOPs=1.0, tf32_TFLOPs=None, fp16_TFLOPs=10.0, bf16_TFLOPs=10.0, l2_MB=None,
        smem_per_sm_KB=None, nvlink_GBps=None, pcie_GBps=None, sources=(), match=(), notes="")
    with pytest.raises(ValueError, match="bandwidth of Mystery GPU is unknown"):
        roofline.machine_balance(spec)


# ----------------------------------------------------------------------------
# Arithmetic intensity
# ----------------------------------------------------------------------------


def test_elementwise_add():
    # x + y: one FLOP per element; read 2, write 1 → 1 / (3 · bytes)
    op = roofline.elementwise(1000, torch.float32, n_inputs=2)
    assert (op.flops, op.bytes) == (1000, 12_000)
    assert op.intensity == pytest.approx(1 / 12)
    assert roofline.elementwise(10, torch.bfloat16, n_inputs=2).intensity == pytest.approx(1 / 6)
    # an activation, 8 FLOPs per element, in place of a tensor: read 1, write 1
    assert roofline.elementwise(10, "fp16", flops_per_element=8).intensity == pytest.approx(2.0)


def test_square_matmul():
    # 2 n³ FLOPs over 3 n² · 2 bytes: I = n / 3 in 16-bit
    op = roofline.matmul(4096, 4096, 4096, torch.bfloat16)
    assert op.flops == 2 * 4096**3
    assert op.bytes == 3 * 4096**2 * 2
    assert op.intensity == pytest.approx(4096 / 3)


def test_matmul_shapes_and_out_dtype():
    # (M, K) @ (K, N) = (2, 3) @ (3, 5): FLOPs 2·2·5·3 = 60; bytes (6 + 15)·2 + 10·4 = 82
    op = roofline.matmul(2, 5, 3, torch.float16, out_dtype=torch.float32)
    assert (op.flops, op.bytes) == (60, 82)


def test_linear_layer_intensity_is_about_the_batch_in_16_bit():
    # X (B×d) · W (d×d), B ≪ d: I = 2Bd² / ((2Bd + d²) · 2) ≈ B
    op = roofline.matmul(16, 8192, 8192, torch.bfloat16)
    assert op.intensity == pytest.approx(2 * 16 * 8192**2 / ((2 * 16 * 8192 + 8192**2) * 2))
    assert 15.9 < op.intensity < 16


@pytest.mark.parametrize("B, H, S_q, S_k, D", [(1, 1, 1, 1, 1), (2, 3, 5, 7, 16), (1, 32, 4096, 4096, 128)])
def test_attention_flops_are_its_two_matmuls(B, H, S_q, S_k, D):
    # Q Kᵀ: (S_q, D) @ (D, S_k) and P V: (S_q, S_k) @ (S_k, D), per head; causal keeps half.
    per_head = roofline.matmul(S_q, S_k, D, "bf16").flops + roofline.matmul(S_q, D, S_k, "bf16").flops
    full = roofline.attention_flops(B, H, S_q, S_k, D, causal=False)
    assert full == B * H * per_head and isinstance(full, int)
    assert roofline.attention_flops(B, H, S_q, S_k, D, causal=True) == full // 2


def test_attention_flops_refuses_bad_shapes():
    with pytest.raises(ValueError, match="S_k must be an integer"):
        roofline.attention_flops(1, 1, 8, 0, 16, causal=True)
    with pytest.raises(ValueError, match="D must be an integer"):
        roofline.attention_flops(1, 1, 8, 8, 16.0, causal=False)


def test_reduction():
    # softmax over 4 rows of 1024 in fp16: 5 FLOPs/element, read once and write once
    op = roofline.reduction(4, 1024, torch.float16)
    assert (op.flops, op.bytes) == (5 * 4096, 2 * 4096 * 2)
    assert op.intensity == pytest.approx(1.25)
    # a row sum writes one number per row
    s = roofline.reduction(4, 1024, torch.float32, flops_per_element=1, out_cols=1)
    assert s.bytes == (4 * 1024 + 4) * 4


# ----------------------------------------------------------------------------
# Roofline time and attainable FLOP/s
# ----------------------------------------------------------------------------

H100 = (989.5e12, 3350e9)


def test_roofline_time_memory_bound():
    op = roofline.elementwise(2**28, torch.float32, n_inputs=2)  # 3 GiB moved
    t = roofline.roofline_time(op, *H100)
    assert t == pytest.approx(3 * 2**28 * 4 / 3350e9)
    assert roofline.bound(op, SPECS["h100_sxm"]) == "memory"


def test_roofline_time_compute_bound():
    op = roofline.matmul(8192, 8192, 8192, torch.bfloat16)
    t = roofline.roofline_time(op, *H100)
    assert t == pytest.approx(2 * 8192**3 / 989.5e12)  # 1.11 ms
    assert roofline.bound(op, SPECS["h100_sxm"]) == "compute"


def test_bound_flips_at_the_critical_batch_size():
    spec = SPECS["a100_40gb"]  # B* ≈ 200.6 with weight bytes only; activations push it up a little
    assert roofline.bound(roofline.matmul(128, 8192, 8192, torch.bfloat16), spec) == "memory"
    assert roofline.bound(roofline.matmul(256, 8192, 8192, torch.bfloat16), spec) == "compute"


def test_attainable_flops():
    peak, bw = H100
    assert roofline.attainable_flops(1.0, peak, bw) == 3350e9           # on the slope
    assert roofline.attainable_flops(1e4, peak, bw) == peak             # on the flat roof
    ridge = peak / bw
    assert roofline.attainable_flops(ridge, peak, bw) == pytest.approx(peak)
    arr = roofline.attainable_flops(np.array([0.0, 1.0, 1e4]), peak, bw)
    np.testing.assert_allclose(arr, [0.0, 3350e9, peak])


def test_roofline_time_is_what_attainable_flops_gives():
    op = roofline.matmul(64, 4096, 4096, torch.float16)
    t = roofline.roofline_time(op, *H100)
    assert op.flops / t == pytest.approx(roofline.attainable_flops(op.intensity, *H100))


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("peak, bw, what", [
    (0, 1e9, "peak_flops"), (-1.0, 1e9, "peak_flops"), (1e12, 0, "bandwidth"),
    (1e12, float("nan"), "bandwidth"), (1e12, float("inf"), "bandwidth"),
])
def test_non_positive_ceilings_are_refused(peak, bw, what):
    op = roofline.elementwise(10, torch.float32)
    with pytest.raises(ValueError, match=f"{what} must be a finite number > 0"):
        roofline.roofline_time(op, peak, bw)
    with pytest.raises(ValueError, match=f"{what} must be a finite number > 0"):
        roofline.attainable_flops(1.0, peak, bw)


def test_bad_ops_are_refused():
    with pytest.raises(ValueError, match="M must be an integer ≥ 1, got 0"):
        roofline.matmul(0, 4, 4, torch.float16)
    with pytest.raises(ValueError, match=r"K must be an integer ≥ 1, got 2\.5"):
        roofline.matmul(4, 4, 2.5, torch.float16)
    with pytest.raises(ValueError, match="unknown dtype 'fp64'"):
        roofline.elementwise(10, "fp64")
    with pytest.raises(ValueError, match="must read or write something"):
        roofline.elementwise(10, torch.float32, n_inputs=0, n_outputs=0)
    with pytest.raises(ValueError, match="bytes must be a finite number > 0"):
        roofline.Op("nothing", 1.0, 0)
    with pytest.raises(ValueError, match="flops must be a finite number ≥ 0"):
        roofline.Op("negative", -1.0, 8)
    with pytest.raises(ValueError, match="intensity must be ≥ 0"):
        roofline.attainable_flops(-1.0, 1e12, 1e9)
    with pytest.raises(TypeError, match="op must be a roofline.Op"):
        roofline.roofline_time(4.0, 1e12, 1e9)
    with pytest.raises(ValueError, match="bytes_per_weight must be a finite number > 0"):
        roofline.critical_batch_size_from(1e12, 1e9, 0)


def test_op_is_frozen():
    op = roofline.matmul(2, 2, 2, torch.float32)
    with pytest.raises(AttributeError):
        op.flops = 0


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------


def test_plot_roofline_and_place():
    fig, ax = roofline.figure("H100 roofline")
    peak, bw = roofline.ceilings(SPECS["h100_sxm"])
    line = roofline.plot_roofline(ax, peak, bw, label="H100 SXM bf16", source=plotting.datasheet("H100 SXM"))
    xs, ys = line.get_data()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert max(ys) == pytest.approx(989.5)             # the flat roof in TFLOP/s
    assert ys[0] == pytest.approx(xs[0] * 3350e9 / 1e12)  # the slope: I · β
    assert any(math.isclose(x, peak / bw) for x in xs)  # the corner is drawn exactly

    op = roofline.matmul(4096, 4096, 4096, torch.bfloat16)
    achieved = roofline.place(ax, op, 190e-6, label="cuBLAS 4096³", source=plotting.reference(
        {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-26"}))
    assert achieved == pytest.approx(2 * 4096**3 / 190e-6)
    plotting.finish(ax)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["H100 SXM bf16 [datasheet: H100 SXM]",
                      "cuBLAS 4096³ [reference: NVIDIA H100 80GB HBM3, 2026-11-26]"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_place_refuses_what_a_log_plot_cannot_show():
    fig, ax = roofline.figure()
    with pytest.raises(ValueError, match="does no FLOPs"):
        roofline.place(ax, roofline.Op("copy", 0, 1024), 1e-6, label="copy")
    with pytest.raises(ValueError, match="time_s must be a finite number > 0"):
        roofline.place(ax, roofline.matmul(2, 2, 2, torch.float32), 0.0, label="x")
    with pytest.raises(ValueError, match="low < high"):
        roofline.plot_roofline(ax, 1e12, 1e9, label="x", source=plotting.datasheet(), intensity_range=(10, 1))
    import matplotlib.pyplot as plt

    plt.close(fig)


# ----------------------------------------------------------------------------
# The CUDA-core roof: elementwise ops and reductions
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("key, fp32_tflops, gbps", [
    ("h100_sxm", 67.0, 3350.0),   # ≈ 20 FLOP/byte
    ("h200", 67.0, 4800.0),       # ≈ 14
    ("l4", 30.3, 300.0),          # ≈ 101
])
def test_cuda_core_ceilings_are_the_plain_fp32_peak(key, fp32_tflops, gbps):
    spec = SPECS[key]
    assert roofline.cuda_core_ceilings(spec) == (fp32_tflops * 1e12, gbps * 1e9)
    assert roofline.cuda_core_balance(spec) == pytest.approx(fp32_tflops * 1e3 / gbps)


def test_cuda_core_ridge_is_far_below_the_tensor_core_ridge():
    for spec in SPECS.values():
        assert 5 < roofline.cuda_core_balance(spec) < 150
        assert roofline.cuda_core_balance(spec) < roofline.machine_balance(spec, torch.float16) / 3


def test_bound_on_the_cuda_cores():
    h100 = SPECS["h100_sxm"]
    # 40 FLOPs per bf16 element read and written: 10 FLOP/byte, memory-bound on either roof of an H100
    op = roofline.elementwise(1000, torch.bfloat16, flops_per_element=40)
    assert roofline.bound(op, h100, cuda_cores=True) == "memory"
    # 200 FLOPs per element: 50 FLOP/byte, above the CUDA-core ridge (20) but below the tensor-core one (295)
    heavy = roofline.elementwise(1000, torch.bfloat16, flops_per_element=200)
    assert roofline.bound(heavy, h100, cuda_cores=True) == "compute"
    assert roofline.bound(heavy, h100, torch.bfloat16) == "memory"
    assert roofline.bound(heavy, h100) == "memory"   # the default is still the tensor-core roof


def test_plot_rooflines_draws_both_roofs():
    fig, ax = roofline.figure("H100: two roofs")
    h100 = SPECS["h100_sxm"]
    tensor, cuda = roofline.plot_rooflines(ax, h100, torch.bfloat16, color="C0")
    assert max(tensor.get_data()[1]) == pytest.approx(989.5)
    assert max(cuda.get_data()[1]) == pytest.approx(67.0)
    assert cuda.get_linestyle() == "--" and tensor.get_linestyle() == "-"
    assert cuda.get_color() == tensor.get_color()
    xs, ys = cuda.get_data()   # the same memory slope below both ridges
    assert ys[0] == pytest.approx(xs[0] * 3350e9 / 1e12)
    assert tensor.get_label().startswith("H100 SXM5 80GB, bfloat16 tensor cores")
    assert cuda.get_label().startswith("H100 SXM5 80GB, FP32 CUDA cores")
    import matplotlib.pyplot as plt

    plt.close(fig)


# --- the ring all-reduce ----------------------------------------------------------------------

def test_ring_allreduce_bytes_per_rank():
    assert roofline.ring_allreduce_bytes(1e6, 1) == 0
    assert roofline.ring_allreduce_bytes(1e6, 2) == pytest.approx(1e6)       # 2·1/2
    assert roofline.ring_allreduce_bytes(1e6, 8) == pytest.approx(1.75e6)    # 2·7/8
    # tends to twice the payload with many ranks
    assert roofline.ring_allreduce_bytes(1e6, 1024) == pytest.approx(2e6, rel=1e-3)


def test_ring_allreduce_time_is_its_bytes_over_one_direction_plus_its_steps_latency():
    bw, lat = 450e9, 5e-6                       # one direction of an H100's 900 GB/s NVLink
    for n in (2, 4, 8):
        t = roofline.ring_allreduce_time(64e6, n, bw, latency=lat)
        steps = 2 * (n - 1)
        assert t == pytest.approx(roofline.ring_allreduce_bytes(64e6, n) / bw + steps * lat)
    assert roofline.ring_allreduce_time(64e6, 1, bw, latency=lat) == 0
    # a decode-sized payload (16 tokens · 8192 · 2 bytes) is latency-bound
    small = roofline.ring_allreduce_time(16 * 8192 * 2, 8, bw, latency=lat)
    assert small == pytest.approx(14 * lat, rel=0.05)


@pytest.mark.parametrize("kwargs, match", [
    ({"payload_bytes": -1, "n": 2, "link_bandwidth": 1e9}, "payload_bytes"),
    ({"payload_bytes": 1, "n": 0, "link_bandwidth": 1e9}, "n"),
    ({"payload_bytes": 1, "n": 2, "link_bandwidth": 0}, "link_bandwidth"),
    ({"payload_bytes": 1, "n": 2, "link_bandwidth": 1e9, "latency": -1e-6}, "latency"),
])
def test_ring_allreduce_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        roofline.ring_allreduce_time(**kwargs)
