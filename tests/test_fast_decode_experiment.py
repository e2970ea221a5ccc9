"""Chapter 9's decode ladder (infer_lib.experiments.fast_decode) and the CUDA-graph decoder
(infer_lib.model.graphs): the plumbing on any machine (tiny model, wall clock), the kernel
categories of the profile, and what a captured step refuses."""

import subprocess
import sys

import pytest
import torch

from infer_lib import device, measure
from infer_lib.experiments import decode, fast_decode
from infer_lib.model import GraphedDecoder, KVCache, ModelConfig, Transformer, decode_one_token, fast


def test_smoke_run_follows_the_layout():
    doc = fast_decode.run(smoke=True, progress=False)
    measure.validate(doc, fast_decode.SCHEMA)
    assert doc["provenance"]["smoke"] is True and doc["timing"] == fast_decode.SMOKE_TIMING
    rungs = [r["rung"] for r in doc["ladder"]]
    assert rungs == [r for r in fast_decode.RUNGS if r != "torch_compile"]     # no compile on a CPU
    config = ModelConfig.from_preset("tiny")
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32   # what the run used
    for r in doc["ladder"] + doc["batch_sweep"] + doc["context_sweep"]:
        assert r["bytes"] == decode.step_bytes(config, r["batch"], r["context"], dtype)
        assert r["fraction_of_roofline"] == pytest.approx(r["roofline_ms"] / r["ms"], rel=1e-3)
    (q,) = doc["int8"]
    # int8 weights: a quarter of fp32's bytes, a half of 16-bit's (plus scales and norms)
    assert q["bytes"] < decode.step_bytes(config, 1, 8, dtype) / (3 if dtype == torch.float32 else 1.6)
    assert doc["profile"][0]["rung"] == "static_cache"
    assert doc["profile"][1]["rung"] in ("fused", "our_matmul")        # the faster of the two
    b1 = {r["rung"]: r["ms"] for r in doc["ladder"]}
    assert b1[doc["profile"][1]["rung"]] == min(b1["fused"], b1["our_matmul"])
    assert doc["peers"][0]["name"] == f"ours ({doc['profile'][1]['rung']} rung)"
    for p in doc["profile"]:
        assert set(p["categories_us"]) == set(fast_decode.CATEGORIES) and p["kernels_per_step"] > 0
    # the plain rung's projections are matmuls (on the CPU: PyTorch's operators, top level)
    assert doc["profile"][0]["categories_us"]["matmul"] > 0
    assert doc["peers"][0]["name"].startswith("ours") and doc["peers"][0]["ok"]


@pytest.mark.parametrize("name, expected", [
    ("_matmul_splitk_kernel", "matmul"), ("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_TNT", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int>", "matmul"), ("_int8_matmul_kernel", "matmul"),
    ("_decode_attention_kernel", "attention"), ("_decode_combine_kernel", "attention"),
    ("_add_rms_norm_kernel", "norm"), ("_rms_norm_kernel", "norm"), ("_swiglu_kernel", "elementwise"),
    ("_rope_cache_kernel", "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add>", "elementwise"),
    ("void at::native::_scatter_gather_elementwise_kernel<128, 8>", "elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float>>>",
     "norm"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<int, at::native::MaxOps<int>>>", "other"),
    ("aten::mm", "matmul"), ("aten::linear", "matmul"), ("aten::embedding", "other"),
])
def test_kernel_categories(name, expected):
    assert fast_decode.category(name) == expected


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU the command measures")
def test_the_command_refuses_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infer_lib.experiments.fast_decode", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(device.HAS_GPU, reason="the CPU's answer")
def test_graphed_decoder_needs_a_gpu():
    model = Transformer(ModelConfig.from_preset("tiny")).eval()
    cache = KVCache(model.config, 1, 8)
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA GPU"):
        GraphedDecoder(model, cache)


def _tiny_bf16(rung: str) -> Transformer:
    torch.manual_seed(0)
    with torch.device(device.DEVICE):
        model = Transformer(ModelConfig.from_preset("tiny"), backend="triton")
    model = model.to(torch.bfloat16).eval().requires_grad_(False)
    if rung != "plain":
        fast.fuse(model)
    if rung == "matmul":
        fast.use_matmul(model, head=True)
    if rung == "int8":
        fast.quantize(model, head=True)
    return model


@pytest.mark.skipif(not device.HAS_GPU, reason="CUDA graphs")
@pytest.mark.parametrize("rung", ["plain", "fused", "matmul", "int8"])
def test_graphed_decoder_replays_what_eager_steps_compute_and_refuses_what_it_cannot(rung):
    model = _tiny_bf16(rung)
    prompt = torch.randint(0, 256, (2, 5), device=device.DEVICE)
    eager_cache, graph_cache = (KVCache(model.config, 2, 9, dtype=torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        for cache in (eager_cache, graph_cache):
            model(prompt, cache)
        decoder = GraphedDecoder(model, graph_cache)
        token = prompt[:, -1]
        for _ in range(4):                                  # positions 5..8: the cache's last
            expected = decode_one_token(model, token, eager_cache)
            got = decoder.step(token).clone()
            torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
            token = expected.argmax(-1)
        assert graph_cache.seqlens.tolist() == eager_cache.seqlens.tolist() == [9, 9]
        with pytest.raises(ValueError, match="static cache holds 9 positions"):
            decoder.step(token)
        with pytest.raises(ValueError, match="captured for a batch of 2"):
            decoder.step(token[:1])
