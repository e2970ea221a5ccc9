"""The setup check (``python -m infer_lib.check``): its lines on this machine, a failure of any
probe turned into a ❌ line with its reason and exit status 1, the GPU lines on a simulated T4,
and the memory the chapters need against the model and cache the chapter would build."""

import os
import subprocess
import sys
import types

import pytest
import torch

from infer_lib import check, device, hardware
from infer_lib.model import KVCache, ModelConfig, Transformer

TITLES = [title for title, _ in check.PROBES]
NO_GPU = pytest.mark.skipif(device.HAS_GPU, reason="the lines of a machine without a GPU")


@pytest.fixture(scope="module")
def results():
    return check.run()


def by_title(results):
    return {r.title: r for r in results}


def test_every_probe_gives_one_line_in_order(results):
    assert [r.title for r in results] == TITLES
    for r in results:
        assert r.status in check.STATUSES and r.detail, r
        assert r.status == check.OK or r.fix, f"{r.title}: a ⚠️ or ❌ line must say what to do"


def test_nothing_fails_on_the_test_machine(results):
    """The test environment has everything the course needs: no ❌, exit status 0."""
    assert [r for r in results if r.status == check.FAIL] == []
    assert check.exit_status(results) == 0


@NO_GPU
def test_lines_without_a_gpu(results):
    lines = by_title(results)
    assert lines["GPU"].status == check.WARN and "interpreter" in lines["GPU"].detail
    assert lines["GPU memory"].status == check.WARN and "no GPU to check" in lines["GPU memory"].detail
    assert lines["GPU memory"].fix == "See the GPU line."
    assert lines["Working dtype"].status == check.OK and lines["Working dtype"].detail.startswith("float32")
    for title in ("Python", "PyTorch", "Jupyter"):
        assert lines[title].status == check.OK, lines[title]
    if device.HAS_TRITON:
        assert lines["Triton"].status == check.OK and "interpreter" in lines["Triton"].detail
        for title in ("Kernel: vector_add", "Kernel with tl.dot: matmul"):
            assert lines[title].status == check.OK, lines[title]
            assert "Triton's interpreter" in lines[title].detail
            assert "matches its reference" in lines[title].detail


@pytest.mark.skipif(not device.HAS_GPU, reason="the kernel lines of a machine with a GPU")
def test_kernels_compile_on_a_gpu(results):
    lines = by_title(results)
    for title in ("Kernel: vector_add", "Kernel with tl.dot: matmul"):
        assert lines[title].status == check.OK and "compiled for the GPU" in lines[title].detail


# --- failures: a probe that raises, a kernel that is wrong, a package that is missing ---------

def test_a_probe_that_raises_becomes_a_fail_line_with_its_reason(monkeypatch, capsys):
    def broken(title):
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(check, "probe_gpu", broken)
    results = check.run()
    line = by_title(results)["GPU"]
    assert line.status == check.FAIL
    assert "RuntimeError: CUDA driver initialization failed" in line.detail and line.fix
    assert [r.title for r in results] == TITLES            # the other probes still ran
    assert check.exit_status(results) == 1
    assert check.main([]) == 1
    out = capsys.readouterr().out
    assert "❌ GPU: the check failed: RuntimeError: CUDA driver initialization failed" in out
    assert "Fix the ❌ lines first" in out


def test_a_probe_that_returns_no_result_fails(monkeypatch):
    monkeypatch.setattr(check, "probe_python", lambda title: None)
    line = by_title(check.run())["Python"]
    assert line.status == check.FAIL and "TypeError" in line.detail


@pytest.mark.skipif(not device.HAS_TRITON, reason="the kernel lines check Triton kernels")
def test_a_kernel_that_differs_from_its_reference_fails(monkeypatch):
    from infer_lib import kernels

    monkeypatch.setattr(kernels, "vector_add", lambda x, y: x + y + 1)
    line = check.run_probe("Kernel: vector_add", check.probe_vector_add)
    assert line.status == check.FAIL
    assert "differs from its reference (largest difference 1" in line.detail
    assert "Restart the Python kernel" in line.fix


def test_too_old_a_python_fails(monkeypatch):
    monkeypatch.setattr(check, "required_python", lambda: (99, 0))
    line = check.probe_python("Python")
    assert line.status == check.FAIL and "99.0" in line.detail and "99.0" in line.fix


def test_the_python_needed_comes_from_the_package():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">={}.{}".format(*check.required_python())


def test_a_missing_optional_package_warns_with_its_pip_command(monkeypatch):
    real = device.installed
    monkeypatch.setattr(device, "installed", lambda name: name != "transformers" and real(name))
    line = check.probe_transformers("transformers (optional)")
    assert line.status == check.WARN and "not installed" in line.detail
    assert "`pip install transformers`" in line.fix


def test_a_jupyter_piece_that_does_not_import_fails(monkeypatch):
    monkeypatch.setattr(check, "JUPYTER_REQUIRED",
                        check.JUPYTER_REQUIRED + (("no_such_module_for_the_check", "a test"),))
    line = check.run_probe("Jupyter", check.probe_jupyter)
    assert line.status == check.FAIL
    assert "no_such_module_for_the_check (a test): ModuleNotFoundError" in line.detail
    assert "`pip install no_such_module_for_the_check`" in line.fix


def test_without_triton_on_a_mac_the_references_run(monkeypatch):
    monkeypatch.setattr(device, "HAS_TRITON", False)
    monkeypatch.setattr(check.platform, "system", lambda: "Darwin")
    line = check.probe_triton("Triton")
    assert line.status == check.WARN
    assert "macOS has no Triton wheels" in line.detail and "PyTorch references" in line.detail
    assert "Colab" in line.fix


def test_without_triton_the_kernel_lines_check_the_references():
    """In a fresh process where Triton cannot be imported (as on macOS): no ❌, the kernel lines
    say the references ran, and the launchers' own warning is left to the Triton line."""
    from test_without_triton import run_blocked

    proc = run_blocked("triton", """
        from infer_lib import check
        for r in check.run():
            print(f"{r.status}|{r.title}|{r.detail}")
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {title: (status, detail) for status, title, detail in
             (line.split("|", 2) for line in proc.stdout.splitlines())}
    assert lines["Triton"][0] == check.WARN and "PyTorch references" in lines["Triton"][1]
    for title in ("Kernel: vector_add", "Kernel with tl.dot: matmul"):
        status, detail = lines[title]
        assert status == check.WARN and detail.startswith("the PyTorch reference (Triton not installed)")
        assert "matches its reference" in detail
    assert check.FAIL not in {status for status, _ in lines.values()}
    assert "TritonNotInstalledWarning" not in proc.stderr


def test_a_cpu_build_of_torch_beside_an_nvidia_driver_warns(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(check, "_has_nvidia_driver", lambda: True)
    line = check.probe_torch("PyTorch")
    assert line.status == check.WARN and "CPU-only build" in line.detail
    assert "pytorch.org" in line.fix


def test_colab_without_a_gpu_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(device, "HAS_GPU", False)
    monkeypatch.setattr(check, "in_colab", lambda: True)
    assert "Runtime → Change runtime type" in check.probe_gpu("GPU").fix


# --- a simulated T4 (sm_75, 15 GiB): the GPU lines ----------------------------------------

@pytest.fixture
def t4(monkeypatch):
    """The GPU lines' view of a Tesla T4; returns a setter for its free memory."""
    props = types.SimpleNamespace(name="Tesla T4", major=7, minor=5, multi_processor_count=40,
                                  total_memory=15 * 2**30)
    free = {"bytes": 14 * 2**30}
    monkeypatch.setattr(device, "HAS_GPU", True)
    monkeypatch.setattr(device, "capability", lambda: (7, 5))
    monkeypatch.setattr(device, "profile", lambda: device.PROFILES["gpu-small"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: props.name)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (free["bytes"], props.total_memory))
    return lambda nbytes: free.update(bytes=nbytes)


def test_a_t4_runs_the_course_in_fp16(t4):
    gpu = check.probe_gpu("GPU")
    assert gpu.status == check.WARN and "Tesla T4" in gpu.detail and "sm_75" in gpu.detail
    assert "compute capability 8.0 and newer" in gpu.detail
    assert hardware.match_name("Tesla T4").key in gpu.detail     # its row of the spec table
    dtype = check.probe_dtype("Working dtype")
    assert dtype.status == check.WARN and dtype.detail.startswith("float16")
    memory = check.probe_gpu_memory("GPU memory")
    assert memory.status == check.OK and "14.0 GiB free of 15.0 GiB" in memory.detail


def test_gpu_memory_held_by_others_warns_and_too_small_a_gpu_fails(t4, monkeypatch):
    need = check.memory_need()
    t4(need.total_bytes - 1)
    line = check.probe_gpu_memory("GPU memory")
    assert line.status == check.WARN and "nvidia-smi" in line.fix
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (2**30, need.total_bytes - 1))
    line = check.probe_gpu_memory("GPU memory")
    assert line.status == check.FAIL and "too small" in line.detail


def test_a_gpu_on_the_cpu_profile_holds_no_model(t4, monkeypatch):
    monkeypatch.setattr(device, "profile", lambda: device.PROFILES["cpu"])
    line = check.probe_gpu_memory("GPU memory")
    assert line.status == check.OK and "builds no model live" in line.detail


# --- the memory the chapters need ------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n, p in device.PROFILES.items() if p.prefill_decode])
def test_memory_need_is_the_model_and_cache_the_chapter_builds(name):
    """The weights of chapter 5's model and its largest KV cache, counted on the modules the
    chapter builds (on the meta device: shapes without memory)."""
    profile = device.PROFILES[name]
    sizes = profile.prefill_decode
    need = check.memory_need(profile)
    config = ModelConfig.from_preset(sizes.preset)
    with torch.device("meta"):
        model = Transformer(config).to(need.dtype)
    assert need.weights_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert need.weights_bytes == config.num_params() * need.dtype.itemsize
    cache = KVCache(config, need.cache_batch, need.cache_tokens, dtype=need.dtype, device="meta")
    assert need.cache_bytes == sum(t.numel() * t.element_size() for t in (cache.k_cache, cache.v_cache))
    # the cache of the largest decoding batch (its context plus the token a step writes), or of
    # the longest prompt, whichever is larger
    decode_tokens = max(sizes.batches) * (sizes.context + 1)
    assert need.cache_batch * need.cache_tokens == max(decode_tokens, max(sizes.lengths))
    assert need.total_bytes == need.weights_bytes + need.cache_bytes
    assert need.preset == sizes.preset and need.dtype.itemsize == 2


@NO_GPU
def test_without_a_gpu_the_need_is_that_of_the_smallest_gpu_profile():
    live = [p for p in device.PROFILES.values() if p.prefill_decode]
    needs = [check.memory_need(p).total_bytes for p in live]
    assert check.memory_need().total_bytes == min(needs)
    assert check.memory_need().dtype == torch.bfloat16


def test_memory_need_refuses_a_profile_without_a_live_model():
    with pytest.raises(ValueError, match="builds no model live"):
        check.memory_need(device.PROFILES["cpu"])


# --- the report and the command ----------------------------------------------------------------

def test_report_lists_every_fix_failures_first():
    results = [check.Result(check.OK, "A", "fine"), check.Result(check.WARN, "B", "less", "do b"),
               check.Result(check.FAIL, "C", "broken", "do c")]
    text = check.report(results, seconds=3)
    assert "Summary (3 s): 1 ✅  1 ⚠️  1 ❌" in text
    assert text.index("❌ C → do c") < text.index("⚠️ B → do b")
    assert "Start with chapter 1" in check.report(results[:1])


def test_the_command_runs_in_a_fresh_process():
    """``python -m infer_lib.check``: every line, the summary, exit status 0 here; within the
    minute a workshop gives it (generous: the CPU runs it in seconds)."""
    out = subprocess.run([sys.executable, "-m", "infer_lib.check"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for title in TITLES:
        assert f" {title}: " in out.stdout, title
    assert "Summary (" in out.stdout


def test_the_command_exits_1_on_a_failing_line():
    """A bad profile override breaks the kernel probes (they size their inputs from it)."""
    env = {**os.environ, "INFER_LIB_PROFILE": "no-such-profile"}
    out = subprocess.run([sys.executable, "-m", "infer_lib.check"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "❌ Kernel: vector_add: the check failed: ValueError: INFER_LIB_PROFILE='no-such-profile'" \
        in out.stdout.replace("\n   ", " ")


def test_the_setup_page_explains_every_line():
    """chapters/00_setup.ipynb says in a sentence what each line means, by its title in bold."""
    import nbformat
    from pathlib import Path

    nb = nbformat.read(Path(__file__).parents[1] / "chapters" / "00_setup.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for title in TITLES:
        assert f"**{title}**" in text, title
    assert "check.run()" in "\n".join(c.source for c in nb.cells if c.cell_type == "code")
