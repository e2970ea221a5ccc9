"""The chapters' measurements, one module per topic.

Each module measures one thing on a GPU and is runnable as
``python -m infer_lib.experiments.<name> --out-dir DIR``, writing
``DIR/<topic>_<gpu>.json`` with a provenance block. The chapters call the same
functions live on a GPU and load the shipped files (``infer_lib/data/``)
without one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def model_cli(argv, *, topic: str, description: str, why_gpu: str, run: Callable[..., dict],
              schema, report: Callable[[dict], None], context: int | None = None) -> None:
    """The command of a measurement on the model, ``python -m infer_lib.experiments.<topic>
    --out-dir DIR [--preset NAME] [--context N]``: refuse without a GPU (saying ``why_gpu``),
    ``run(preset[, context=N])``, validate against ``schema``, write ``DIR/<topic>_<gpu>.json``,
    print ``report(doc)`` and the path. ``context`` is the default of ``--context``, which
    only commands whose ``run`` takes one offer."""
    from .. import device, measure

    parser = argparse.ArgumentParser(prog=f"python -m infer_lib.experiments.{topic}",
                                     description=f"{description}; write {topic}_<gpu>.json.")
    parser.add_argument("--out-dir", required=True, type=Path, help=f"folder for {topic}_<gpu>.json")
    parser.add_argument("--preset", default="llama-3.2-1b", help="model shapes (infer_lib.model.PRESETS)")
    if context is not None:
        parser.add_argument("--context", type=int, default=context, help="tokens in each sequence's cache")
    args = parser.parse_args(argv)
    if not device.HAS_GPU:
        parser.exit(2, f"python -m infer_lib.experiments.{topic} needs a CUDA GPU: {why_gpu}\n")
    doc = run(args.preset, context=args.context) if context is not None else run(args.preset)
    measure.validate(doc, schema)
    path = measure.save(doc, args.out_dir / f"{topic}_{measure.gpu_key()}.json")
    report(doc)
    print(f"-> {path}")
