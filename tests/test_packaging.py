"""The wheel built from the repository carries the package data the chapters and experiments
read: the measurement files, the training corpus and the trained course model."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from infer_lib import measure

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_package_data(tmp_path):
    # built from a copy of what the wheel is made of, so the build leaves nothing in the repository
    src = tmp_path / "src"
    shutil.copytree(ROOT / "infer_lib", src / "infer_lib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("infer_lib-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = measure.data_dir()
    shipped = [p.relative_to(data.parent.parent).as_posix() for p in data.rglob("*") if p.is_file()]
    for required in ("infer_lib/data/corpus/python_stdlib.txt.xz", "infer_lib/data/corpus/LICENSE",
                     "infer_lib/data/course_model/model.safetensors",
                     "infer_lib/data/course_model/config.json",
                     "infer_lib/data/course_model/train_log.json",
                     "infer_lib/data/bench_h200.json"):
        assert required in shipped, f"{required} is not in the repository"
    missing = sorted(set(shipped) - names)
    assert not missing, f"files under infer_lib/data/ missing from the wheel: {missing}"
