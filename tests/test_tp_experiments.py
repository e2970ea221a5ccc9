"""The multi-GPU experiments (infer_lib.experiments.allreduce and tp_decode) as plumbing: their
smoke runs over 2 gloo processes on the CPU and over one, the files only rank 0 writes, what the
records say, and the refusals of the commands outside torchrun or without a GPU.

Nothing here is a measurement (smoke runs: wall clocks on CPUs). The processes are spawned as in
tests/test_parallel.py: ``127.0.0.1`` and ports the OS picked as free, a deadline after which
they are killed, so a failure never hangs the run or leaves a process behind.
"""

import os

# Multicast objects (NVLink SHARP / NVLS) can take a shared host's GPUs out of service: every
# process started from here inherits these (the experiment modules set them too, on import).
for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_name, _value)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from infer_lib import device, measure, parallel  # noqa: E402
from infer_lib.experiments import allreduce, decode, tp_decode  # noqa: E402
from infer_lib.model import ModelConfig  # noqa: E402
from conftest import free_port, spawn_ranks  # noqa: E402

DEADLINE_S = 120                 # a spawned group that outlives this is killed and the test fails
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _torchrun_env(rank: int, world_size: int, port: int) -> dict:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}


def _worker(rank: int, world_size: int, ports: tuple[int, int], out_root: str) -> None:
    """What torchrun would start: each command in turn, each with its own group (and port);
    every rank gets its own --out-dir, so the test sees which ranks wrote."""
    torch.set_num_threads(1)                     # N processes on two cores
    out_dir = str(Path(out_root, f"rank{rank}"))
    for module, port in ((allreduce, ports[0]), (tp_decode, ports[1])):
        os.environ.update(_torchrun_env(rank, world_size, port))
        module.main(["--out-dir", out_dir, "--smoke"])
        assert not dist.is_initialized()         # main leaves the group


def _load(path: Path, schema) -> dict:
    doc = json.loads(path.read_text())
    measure.validate(doc, schema)
    return doc


def _check_allreduce(doc: dict, N: int) -> None:
    assert doc["timing"] == allreduce.SMOKE_TIMING and doc["provenance"]["smoke"] is True
    assert doc["provenance"]["world_size"] == doc["params"]["world_size"] == N
    assert doc["provenance"]["backend"] == "gloo" and doc["provenance"]["topology"] is None
    assert doc["provenance"]["env"] == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                        "NVSHMEM_DISABLE_NVLS": "1"}
    assert [r["bytes"] for r in doc["records"]] == list(allreduce.SMOKE_SIZES)
    for r in doc["records"]:
        assert r["algbw_GBps"] == pytest.approx(r["bytes"] / r["us"] / 1e3, rel=1e-3)
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * (N - 1) / N, rel=1e-3, abs=0)
        assert r["model_us"] is None             # no GPU, no link figure: no ring model


def _check_tp(doc: dict, N: int) -> None:
    assert doc["timing"] == tp_decode.SMOKE_TIMING and doc["provenance"]["smoke"] is True
    assert doc["provenance"]["world_size"] == doc["params"]["world_size"] == N
    config = ModelConfig.from_preset("tiny")
    local = parallel.shard_config(config, N)
    context = doc["params"]["context"]
    assert doc["params"]["preset"] == "tiny" and context == tp_decode.SMOKE_CONTEXT
    assert [r["batch"] for r in doc["records"]] == list(tp_decode.SMOKE_BATCHES)
    # replicated on every rank: the 2L + 1 norms; everything else split evenly (H_kv = 2 = N here)
    full_weights = decode.step_bytes(config, 1, 0, torch.float32)
    replicated = (2 * config.n_layers + 1) * config.dim * 4
    for r in doc["records"]:
        assert r["graph"] is False and r["allreduce_share"] is None and r["nccl_share"] is None
        assert r["tokens_per_s"] == pytest.approx(r["batch"] / (r["ms"] / 1e3), rel=1e-3)
        assert r["rank_kv_bytes"] == local.kv_cache_bytes_per_token(torch.float32) * context * r["batch"]
        assert r["rank_weight_bytes"] == (full_weights - replicated) // N + replicated
        assert r["rank_bytes"] == r["rank_weight_bytes"] + r["rank_kv_bytes"]
        assert r["roofline_ms"] == pytest.approx(r["rank_bytes"] / (doc["copy_GBps"] * 1e6), rel=1e-3)
        assert r["fraction_of_roofline"] == pytest.approx(r["roofline_ms"] / r["ms"], rel=1e-3)


def test_two_processes_run_both_commands_and_only_rank_0_writes(tmp_path):
    spawn_ranks(_worker, 2, (free_port(), free_port()), str(tmp_path), deadline_s=DEADLINE_S)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0"]          # rank 1 wrote nothing
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["allreduce_cpux2.json", "tp_cpux2.json"]
    _check_allreduce(_load(tmp_path / "rank0" / "allreduce_cpux2.json", allreduce.SCHEMA), 2)
    _check_tp(_load(tmp_path / "rank0" / "tp_cpux2.json", tp_decode.SCHEMA), 2)


def test_one_process_without_spawning(tmp_path, monkeypatch):
    for module, name, check in ((allreduce, "allreduce_cpux1.json", _check_allreduce),
                                (tp_decode, "tp_cpux1.json", _check_tp)):
        for key, value in _torchrun_env(0, 1, free_port()).items():
            monkeypatch.setenv(key, value)
        try:
            module.main(["--out-dir", str(tmp_path), "--smoke"])
        finally:
            parallel.shutdown()
        assert not dist.is_initialized()
        check(_load(tmp_path / name, module.SCHEMA), 1)
    doc = json.loads((tmp_path / "allreduce_cpux1.json").read_text())
    assert all(r["busbw_GBps"] == 0 for r in doc["records"])                 # one rank sends nothing
    doc = json.loads((tmp_path / "tp_cpux1.json").read_text())
    config = ModelConfig.from_preset("tiny")
    for r in doc["records"]:                     # one rank reads what one GPU's decode step reads
        assert r["rank_bytes"] == decode.step_bytes(config, r["batch"], doc["params"]["context"], torch.float32)


def test_a_record_without_its_numbers_fails_validation(tmp_path):
    doc = {"provenance": {**measure.provenance(), "world_size": 2, "backend": "gloo", "topology": None},
           "timing": "t", "params": {"world_size": 2, "dtype": "bfloat16"},
           "records": [{"bytes": 4096, "us": 1.0, "busbw_GBps": 1.0, "model_us": None, "inner": 1, "reps": 1}]}
    with pytest.raises(ValueError, match="algbw_GBps"):
        measure.validate(doc, allreduce.SCHEMA)
    del doc["provenance"]["topology"]
    doc["records"][0]["algbw_GBps"] = 4.0
    with pytest.raises(ValueError, match="provenance lacks 'topology'"):
        measure.validate(doc, allreduce.SCHEMA)


@pytest.mark.parametrize("module", [allreduce, tp_decode])
def test_the_commands_refuse_outside_torchrun(module, tmp_path, monkeypatch, capsys):
    for key in TORCHRUN_VARS:
        monkeypatch.delenv(key, raising=False)
    name = module.__name__.rsplit(".", 1)[1]
    with pytest.raises(SystemExit) as exit_:
        module.main(["--out-dir", str(tmp_path), "--smoke"])
    assert exit_.value.code == 2
    assert f"torchrun --nproc-per-node N -m infer_lib.experiments.{name} --out-dir DIR" in capsys.readouterr().err
    assert not dist.is_initialized() and not list(tmp_path.iterdir())


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("module", [allreduce, tp_decode])
def test_the_commands_refuse_to_time_cpus(module, tmp_path, monkeypatch, capsys):
    for key, value in _torchrun_env(0, 1, free_port()).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--out-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "needs CUDA GPUs" in capsys.readouterr().err
    assert not dist.is_initialized() and not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        module.run()


def test_the_multicast_switches_are_off():
    for name, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                        ("NVSHMEM_DISABLE_NVLS", "1")):
        assert os.environ[name] == value
