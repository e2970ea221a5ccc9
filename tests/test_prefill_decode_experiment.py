"""The prefill/decode experiment (infer_lib.experiments.prefill_decode): its plumbing on any
machine, its FLOP counts, and its refusal to time a CPU."""

import subprocess
import sys

import pytest

from infer_lib import device, measure
from infer_lib.experiments import prefill_decode as pd
from infer_lib.model import ModelConfig


def test_smoke_run_follows_the_layout():
    doc = pd.run(smoke=True)
    measure.validate(doc, pd.SCHEMA)
    assert doc["provenance"]["smoke"] is True and doc["timing"] == pd.SMOKE_TIMING
    assert [r["length"] for r in doc["prefill"]] == [4, 8] and [r["batch"] for r in doc["decode"]] == [1, 2]


def test_flop_counts():
    cfg = ModelConfig.from_preset("llama-3.2-1b")
    weights = cfg.num_params()                    # tied: the head is the embedding matrix
    # decode: about two FLOPs per weight per sequence; attention adds little at short context
    assert pd.decode_flops(cfg, 16, 1) == pytest.approx(2 * 16 * weights, rel=1e-3)
    assert pd.decode_flops(cfg, 1, 4096) > pd.decode_flops(cfg, 1, 1)
    # prefill: linear in the prompt, plus attention's quadratic part; the head only once
    one, two = pd.prefill_flops(cfg, 1024), pd.prefill_flops(cfg, 2048)
    assert 2 < two / one < 2.2
    head = cfg.vocab_size * cfg.dim
    assert pd.prefill_flops(cfg, 1) == pytest.approx(2 * weights, rel=1e-3)
    assert pd.prefill_flops(cfg, 100) < 2 * 100 * weights            # the head not 100 times
    assert pd.prefill_flops(cfg, 100) > 2 * 100 * (weights - head)


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU the command measures")
def test_the_command_refuses_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infer_lib.experiments.prefill_decode", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


@pytest.mark.skipif(not device.HAS_GPU, reason="GPU timings and CUDA graphs")
def test_a_tiny_model_on_the_gpu():
    doc = pd.run("tiny", lengths=(16, 64), batches=(1, 4), context=32)
    measure.validate(doc, pd.SCHEMA)
