"""The chapters' measurements, one module per topic.

Each module measures one thing on a GPU and is runnable as
``python -m infer_lib.experiments.<name> --out-dir DIR``, writing
``DIR/<topic>_<gpu>.json`` with a provenance block. The chapters call the same
functions live on a GPU and load the shipped files (``infer_lib/data/``)
without one.
"""
