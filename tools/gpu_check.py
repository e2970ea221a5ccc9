"""The GPU check, in one command: ``python tools/gpu_check.py OUTDIR PART [PART ...]``.

Run on a machine with a CUDA GPU (it may have no network). Parts, each a few
minutes at most, run in the order given:

  env                  the GPU, driver, torch, triton, the commit (always run first)
  tests [ARGS]         the unit tests (or the test files named in ARGS), kernels *compiled* on
                       the GPU (no interpreter); ARGS go to pytest, e.g. -k matmul
  notebooks [NN ...]   execute the chapters (all, or those numbered NN) top to bottom in a
                       fresh kernel (nbclient: any error fails, except in cells tagged
                       raises-exception, as under nbval --nbval-lax), saving the executed copies
  data [MODULE ...]    chapter measurement sweeps -> <topic>_<gpu>.json (all DATA_MODULES,
                       or the modules named)
  bench [NAME ...]     python -m infer_lib.bench (all kernels, or the NAMEs)

Everything lands in OUTDIR/gpu_check.tar.gz: log.txt (all output), junit XML,
the bench JSON, the data files and the executed notebooks. Jupyter packages
missing on the machine are installed from ./wheels (``make wheels`` downloads
them for Python 3.12) without network.

Set INFER_LIB_COMMIT to the commit of the tree the machine was given (it has no
.git): every measurement file's provenance records it, and the env part logs it.

Example: python tools/gpu_check.py $OUT tests bench --only vector_add
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("env", "tests", "notebooks", "data", "bench")
#: modules whose ``python -m MODULE --out-dir DIR`` writes the chapters' measurement files
DATA_MODULES = ("infer_lib.experiments.ceilings", "infer_lib.experiments.bottlenecks",
                "infer_lib.experiments.attention_sweep", "infer_lib.experiments.decode",
                "infer_lib.experiments.kv_cache", "infer_lib.experiments.prefill_decode",
                "infer_lib.experiments.tensor_cores", "infer_lib.experiments.fusion",
                "infer_lib.experiments.gqa_quality", "infer_lib.experiments.gqa_speed",
                "infer_lib.experiments.block_size", "infer_lib.experiments.fast_decode",
                "infer_lib.experiments.serving")
NOTEBOOK_PKGS = ("nbclient", "ipykernel", "ipywidgets", "nbformat")


EXECUTE = """
import sys, time, nbformat
from nbclient import NotebookClient
src, dst = sys.argv[1], sys.argv[2]
nb = nbformat.read(src, as_version=4)
t0 = time.time()
try:
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "chapters"}}).execute()
finally:
    nbformat.write(nb, dst)
print(f"executed {src} in {time.time() - t0:.0f} s")
"""


class Log:
    def __init__(self, path: Path):
        self.f = path.open("a")

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        self.f.write(msg + "\n")
        self.f.flush()

    def run(self, cmd: list[str], **kw) -> int:
        self(f"$ {' '.join(cmd)}")
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, **kw)
        for line in proc.stdout:
            sys.stdout.write(line)
            self.f.write(line)
        rc = proc.wait()
        self(f"# exit {rc} after {time.time() - t0:.0f} s")
        return rc


def split_parts(argv: list[str]) -> list[tuple[str, list[str]]]:
    parts: list[tuple[str, list[str]]] = []
    for a in argv:
        if a in PARTS:
            parts.append((a, []))
        elif parts:
            parts[-1][1].append(a)
        else:
            raise SystemExit(f"gpu_check: {a!r} is not a part; parts are {', '.join(PARTS)}")
    return parts


def ensure_notebook_packages(log: Log) -> None:
    missing = [p for p in NOTEBOOK_PKGS if importlib.util.find_spec(p) is None]
    if not missing:
        return
    wheels = ROOT / "wheels"
    if not wheels.is_dir():
        raise SystemExit(f"gpu_check: {missing} missing and no ./wheels folder; run `make wheels` and carry it")
    log.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), *missing])


def pinned_numpy(log: Log, env: dict) -> None:
    """Run every part with requirements.txt's NumPy when the machine has another one.

    numba-cuda (0.30.4, the newest as of 2026-12) registers ``np.row_stack``, which NumPy
    2.5 removed, when it compiles a kernel for a GPU. So where the machine's NumPy differs
    from the pin and ``./wheels`` holds the pinned wheel (``make wheels``), that wheel is
    installed into a folder put first on every subprocess's PYTHONPATH.
    """
    import numpy

    pin = next((line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                if line.startswith("numpy==")), None)
    if pin is None or numpy.__version__ == pin:
        return
    wheel = sorted((ROOT / "wheels").glob(f"numpy-{pin}-*.whl"))
    if not wheel:
        log(f"numpy {numpy.__version__} here, {pin} pinned, no wheel for it in ./wheels: using {numpy.__version__}")
        return
    site = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
    log.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
             "--target", str(site), str(wheel[-1])])
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    log(f"numpy {pin} (pinned) from ./wheels first on PYTHONPATH; the machine has {numpy.__version__}")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    out = Path(argv[0]).resolve()
    parts = split_parts(argv[1:])
    work = out / "gpu_check"
    work.mkdir(parents=True, exist_ok=True)
    log = Log(work / "log.txt")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TRITON_INTERPRET", None)
    failures = []
    pinned_numpy(log, env)

    log("== env")
    # env keeps INFER_LIB_COMMIT: every subprocess's measure.provenance() records it
    log(f"INFER_LIB_COMMIT={env.get('INFER_LIB_COMMIT') or '(not set)'}")
    log.run(["nvidia-smi"], env=env)
    code = ("import infer_lib, torch; from infer_lib import device, measure; print(device.describe()); "
            "print('commit:', measure.commit()); "
            "assert device.HAS_GPU and not device.INTERPRET, 'no GPU: this check needs one'")
    if log.run([sys.executable, "-c", code], env=env):
        return 1

    for part, args in parts:
        log(f"== {part} {' '.join(args)}")
        if part == "env":
            continue
        if part == "tests":
            ensure_notebook_packages(log)  # tests/test_notebooks.py reads the chapters with nbformat
            rc = log.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark",
                          "-n", "8",
                          f"--junitxml={work / 'junit_tests.xml'}",
                          *([] if any(a.endswith(".py") for a in args) else ["tests"]), *args], env=env)
        elif part == "notebooks":
            ensure_notebook_packages(log)
            chapters = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
            if args:
                chapters = [c for c in chapters if c.name[:2] in args]
            executed = work / "notebooks"
            executed.mkdir(exist_ok=True)
            rc = 0
            for nb in chapters:
                # nbclient runs every cell in a fresh kernel and stops at the first error, except in
                # cells tagged raises-exception (the exercise stubs) — what nbval --nbval-lax checks —
                # and keeps the outputs, so we can look at what a reader on this GPU sees.
                rc |= log.run([sys.executable, "-c", EXECUTE, str(nb), str(executed / nb.name)], env=env)
        elif part == "data":
            rc = 0
            for module in (args or DATA_MODULES):
                rc |= log.run([sys.executable, "-m", module, "--out-dir", str(work / "data")], env=env)
        elif part == "bench":
            import torch  # noqa: F401  (only to name the file after the GPU)

            sys.path.insert(0, str(ROOT))
            from infer_lib import measure

            extra = ["--only", *args] if args and not args[0].startswith("-") else args
            rc = log.run([sys.executable, "-m", "infer_lib.bench", "--out",
                          str(work / f"bench_{measure.gpu_key()}.json"), *extra], env=env)
        if rc:
            failures.append(part)
        _archive(work, out)  # after every part, so a run cut short still leaves what it did

    log(f"== done: {'FAILED ' + ', '.join(failures) if failures else 'all parts passed'}")
    log.f.close()
    print(f"wrote {_archive(work, out)}")
    shutil.rmtree(work)
    return 1 if failures else 0


def _archive(work: Path, out: Path) -> Path:
    archive = out / "gpu_check.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work, arcname="gpu_check")
    return archive


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
