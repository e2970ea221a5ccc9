"""The GPUs of the course: a cited table of datasheet figures, and detection of
the GPU this code runs on.

Every figure in ``SPECS`` comes from the sources listed in its row: NVIDIA's
datasheet for the peaks, memory and links, and — where a datasheet leaves them
out — the architecture whitepaper, the CUDA tuning guide or a device query for
the SM count, the L2 and the shared memory. The chapters read their numbers
from here (``spec_table()`` for display, ``sources_markdown()`` for the
references), so each number is typed once.

Conventions (units are in the field names):

* Bandwidth in GB/s with 1 GB/s = 1e9 bytes/s; memory capacity in GB as NVIDIA
  markets it — which for memory, sold in stacks and chips of binary sizes, means GiB
  (2**30 bytes; chapter 1): ``GPUSpec.memory_bytes`` = ``memory_GB * 2**30``. The driver reports a little
  less (what it reserves).
* FLOP/s are **dense** peaks in TFLOP/s (1e12 FLOP/s), at the boost clock the
  datasheet assumes. From Ampere on, datasheets headline tensor-core figures
  *with 2:4 structured sparsity*, marked with an asterisk; the dense peak is
  half of it, and that half is what the table stores. ``fp32_TFLOPs`` is plain
  (non-tensor) FP32; ``tf32_TFLOPs``, ``fp16_TFLOPs`` and ``bf16_TFLOPs`` are
  tensor-core peaks; ``None`` means the chip has no such tensor cores (V100
  and T4 have no TF32 or BF16).
* NVLink and PCIe figures are the **total bidirectional** bandwidth of one GPU,
  as NVIDIA quotes them: one direction gets half (an H100's PCIe Gen5 x16 is
  quoted as 128 GB/s, 64 GB/s each way).
* L2 in MB and shared memory in KB as NVIDIA quotes them, which are binary
  units (the H100's "50 MB" of L2 is 50 × 2**20 bytes).

Peaks are ceilings, not promises: ``infer_lib.measure.copy_bandwidth`` and
``infer_lib.measure.matmul_flops`` (swept over sizes by ``python -m
infer_lib.experiments.ceilings --out-dir DIR``) show how close a real GPU gets.
This module only describes GPUs; it measures nothing and imports nothing that does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from . import device

#: The most threads one thread block may have, on every NVIDIA GPU since compute capability 2.0
#: (CUDA C++ Programming Guide, "Compute Capabilities": technical specifications per compute
#: capability, https://docs.nvidia.com/cuda/cuda-c-programming-guide/).
MAX_THREADS_PER_BLOCK = 1024
#: Threads per warp on every NVIDIA GPU so far (the same table).
WARP_SIZE = 32


@dataclass(frozen=True)
class GPUSpec:
    """One GPU's datasheet figures; ``None`` where the chip lacks the feature
    (or, for GPUs outside the table, where the figure is unknown)."""

    key: str
    name: str
    architecture: str | None
    compute_capability: str
    year: int | None
    form_factor: str | None
    sms: int
    memory_GB: float
    memory_type: str | None
    bandwidth_GBps: float | None
    fp32_TFLOPs: float | None
    tf32_TFLOPs: float | None
    fp16_TFLOPs: float | None
    bf16_TFLOPs: float | None
    l2_MB: float | None
    smem_per_sm_KB: float | None
    nvlink_GBps: float | None
    pcie_GBps: float | None
    #: (title, url) pairs: the datasheet first, then whatever fills its gaps
    sources: tuple[tuple[str, str], ...]
    #: lowercase words that identify the GPU in torch.cuda.get_device_name();
    #: all must appear as whole words, and one starting with "!" must not appear
    match: tuple[str, ...]
    notes: str

    def peak_tflops(self, dtype: torch.dtype | str) -> float:
        """Dense peak TFLOP/s for ``dtype``; see the module function ``peak_tflops``."""
        return peak_tflops(self, dtype)

    @property
    def memory_bytes(self) -> float:
        """The memory in bytes: ``memory_GB`` GiB, as NVIDIA's memory "GB" are (see above)."""
        return self.memory_GB * 2**30

    @property
    def capability(self) -> tuple[int, int]:
        """``compute_capability`` as a tuple, e.g. ``(9, 0)``, for comparisons."""
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


# ----------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------

_V100_DATASHEET = ("NVIDIA Tesla V100 GPU Accelerator datasheet",
                   "https://images.nvidia.com/content/technologies/volta/pdf/"
                   "volta-v100-datasheet-update-us-1165301-r5.pdf")
_VOLTA_WHITEPAPER = ("NVIDIA Tesla V100 GPU Architecture (Volta whitepaper)",
                     "https://images.nvidia.com/content/volta-architecture/pdf/"
                     "volta-architecture-whitepaper.pdf")
_T4_DATASHEET = ("NVIDIA T4 Tensor Core GPU datasheet",
                 "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/"
                 "t4-tensor-core-datasheet-951643.pdf")
_TURING_WHITEPAPER = ("NVIDIA Turing GPU Architecture whitepaper",
                      "https://images.nvidia.com/aem-dam/en-zz/Solutions/design-visualization/"
                      "technologies/turing-architecture/NVIDIA-Turing-Architecture-Whitepaper.pdf")
_TURING_TUNING = ("Turing Tuning Guide (CUDA documentation)",
                  "https://docs.nvidia.com/cuda/turing-tuning-guide/index.html")
_A100_DATASHEET = ("NVIDIA A100 Tensor Core GPU datasheet",
                   "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
                   "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
_AMPERE_WHITEPAPER = ("NVIDIA A100 Tensor Core GPU Architecture (Ampere whitepaper)",
                      "https://images.nvidia.com/aem-dam/en-zz/Solutions/data-center/"
                      "nvidia-ampere-architecture-whitepaper.pdf")
_H100_DATASHEET = ("NVIDIA H100 Tensor Core GPU datasheet",
                   "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet")
_HOPPER_WHITEPAPER = ("NVIDIA H100 Tensor Core GPU Architecture (Hopper whitepaper)",
                      "https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper")
_HOPPER_TUNING = ("Hopper Tuning Guide (CUDA documentation)",
                  "https://docs.nvidia.com/cuda/hopper-tuning-guide/index.html")
_L4_DATASHEET = ("NVIDIA L4 Tensor Core GPU (product page and datasheet)",
                 "https://www.nvidia.com/en-us/data-center/l4/")
_ADA_WHITEPAPER = ("NVIDIA Ada GPU Architecture whitepaper",
                   "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/"
                   "nvidia-ada-gpu-architecture.pdf")
_ADA_TUNING = ("Ada Tuning Guide (CUDA documentation)",
               "https://docs.nvidia.com/cuda/ada-tuning-guide/index.html")
_L4_DEVICE_QUERY = ("deviceQuery output of an NVIDIA L4 (bottlerocket-kernel-kit PR #139)",
                    "https://github.com/bottlerocket-os/bottlerocket-kernel-kit/pull/139")
_H200_PAGE = ("NVIDIA H200 Tensor Core GPU (product page and datasheet)",
              "https://www.nvidia.com/en-us/data-center/h200/")
_H200_DEVICE_QUERY = ("torch.cuda.get_device_properties on an NVIDIA H200 (132 SMs, 60 MB L2)", "")
_HGX_PAGE = ("NVIDIA HGX platform specifications (HGX B200)",
             "https://www.nvidia.com/en-us/data-center/hgx/")
_DGX_B200_PAGE = ("NVIDIA DGX B200 (product page and datasheet)",
                  "https://www.nvidia.com/en-us/data-center/dgx-b200/")
_BLACKWELL_TUNING = ("Blackwell Tuning Guide (CUDA documentation)",
                     "https://docs.nvidia.com/cuda/blackwell-tuning-guide/index.html")
_B200_CHIPS_AND_CHEESE = ("Chips and Cheese: Nvidia's B200, Keeping the CUDA Juggernaut Rolling",
                          "https://chipsandcheese.com/p/nvidias-b200-keeping-the-cuda-juggernaut")
_B200_DEVICE_QUERY = ("Device properties of an NVIDIA B200 (pytorch/ao PR #4002)",
                      "https://github.com/pytorch/ao/pull/4002")
_B200_MLPERF_SYSTEM = ("MLPerf Inference v6.0 system description, 8x B200-SXM-180GB (host link)",
                       "https://github.com/mlcommons/inference_results_v6.0/blob/main/closed/"
                       "Nebius/systems/nebius_b200_n1.json")


# ----------------------------------------------------------------------------
# The table, in launch order
# ----------------------------------------------------------------------------

SPECS: dict[str, GPUSpec] = {
    "v100": GPUSpec(
        key="v100", name="V100 SXM2 32GB", architecture="Volta", compute_capability="7.0",
        year=2017, form_factor="SXM2", sms=80, memory_GB=32.0, memory_type="HBM2",
        bandwidth_GBps=900.0, fp32_TFLOPs=15.7, tf32_TFLOPs=None, fp16_TFLOPs=125.0,
        bf16_TFLOPs=None, l2_MB=6.0, smem_per_sm_KB=96.0, nvlink_GBps=300.0, pcie_GBps=32.0,
        sources=(_V100_DATASHEET, _VOLTA_WHITEPAPER),
        match=("v100", "sxm2", "32gb"),
        notes="SXM2 module; peaks at its boost clock. The V100 launched in 2017, the 32 GB "
              "version in 2018; the 16 GB SXM2 part is the same chip with half the memory. "
              "First-generation tensor cores: FP16 only, no sparsity, no TF32 or BF16. The host "
              "link is PCIe Gen3 x16. SMs, L2 and shared memory from the Volta whitepaper.",
    ),
    "t4": GPUSpec(
        key="t4", name="T4", architecture="Turing", compute_capability="7.5",
        year=2018, form_factor="PCIe", sms=40, memory_GB=16.0, memory_type="GDDR6",
        bandwidth_GBps=300.0, fp32_TFLOPs=8.1, tf32_TFLOPs=None, fp16_TFLOPs=65.0,
        bf16_TFLOPs=None, l2_MB=4.0, smem_per_sm_KB=64.0, nvlink_GBps=None, pcie_GBps=32.0,
        sources=(_T4_DATASHEET, _TURING_WHITEPAPER, _TURING_TUNING),
        match=("t4",),
        notes="70 W low-profile PCIe Gen3 card (Colab's free GPU), boost clock 1590 MHz. The "
              "datasheet quotes 300 GB/s; its 256-bit GDDR6 at 10 Gb/s is 320 GB/s, the figure "
              "in the Turing whitepaper. FP16 tensor cores with FP32 accumulation, no "
              "sparsity, no BF16: bf16 code falls back to fp16. SMs and L2 from the Turing "
              "whitepaper, shared memory from the Turing tuning guide.",
    ),
    "a100_40gb": GPUSpec(
        key="a100_40gb", name="A100 SXM4 40GB", architecture="Ampere", compute_capability="8.0",
        year=2020, form_factor="SXM4", sms=108, memory_GB=40.0, memory_type="HBM2",
        bandwidth_GBps=1555.0, fp32_TFLOPs=19.5, tf32_TFLOPs=156.0, fp16_TFLOPs=312.0,
        bf16_TFLOPs=312.0, l2_MB=40.0, smem_per_sm_KB=164.0, nvlink_GBps=600.0, pcie_GBps=64.0,
        sources=(_A100_DATASHEET, _AMPERE_WHITEPAPER),
        match=("a100", "sxm4", "40gb"),
        notes="SXM4 module at its 1410 MHz boost clock. The datasheet prints dense tensor "
              "peaks with the sparse ones (312 and 624 TFLOP/s for FP16); the table keeps the "
              "dense. PCIe Gen4 x16 to the host. SMs, L2 and shared memory from the Ampere "
              "whitepaper.",
    ),
    "a100_80gb": GPUSpec(
        key="a100_80gb", name="A100 SXM4 80GB", architecture="Ampere", compute_capability="8.0",
        year=2020, form_factor="SXM4", sms=108, memory_GB=80.0, memory_type="HBM2e",
        bandwidth_GBps=2039.0, fp32_TFLOPs=19.5, tf32_TFLOPs=156.0, fp16_TFLOPs=312.0,
        bf16_TFLOPs=312.0, l2_MB=40.0, smem_per_sm_KB=164.0, nvlink_GBps=600.0, pcie_GBps=64.0,
        sources=(_A100_DATASHEET, _AMPERE_WHITEPAPER),
        match=("a100", "sxm4", "80gb"),
        notes="The 40 GB chip with HBM2e: same peaks, 31% more bandwidth. The 80 GB PCIe card "
              "(1935 GB/s, 300 W) is a different row and is not in this table.",
    ),
    "h100_sxm": GPUSpec(
        key="h100_sxm", name="H100 SXM5 80GB", architecture="Hopper", compute_capability="9.0",
        year=2022, form_factor="SXM5", sms=132, memory_GB=80.0, memory_type="HBM3",
        bandwidth_GBps=3350.0, fp32_TFLOPs=67.0, tf32_TFLOPs=494.5, fp16_TFLOPs=989.5,
        bf16_TFLOPs=989.5, l2_MB=50.0, smem_per_sm_KB=228.0, nvlink_GBps=900.0, pcie_GBps=128.0,
        sources=(_H100_DATASHEET, _HOPPER_WHITEPAPER, _HOPPER_TUNING),
        match=("h100", "hbm3"),
        notes="The course's reference GPU (device name 'NVIDIA H100 80GB HBM3'), 700 W SXM5. "
              "Tensor peaks are half the datasheet's sparse figures (1979 → 989.5 TFLOP/s "
              "BF16); the whitepaper lists 989.4 dense. Sustained cuBLAS throughput is "
              "lower: measure it with infer_lib.measure.matmul_flops. SMs, L2 and shared memory "
              "from the Hopper whitepaper and tuning guide.",
    ),
    "h100_pcie": GPUSpec(
        key="h100_pcie", name="H100 PCIe 80GB", architecture="Hopper", compute_capability="9.0",
        year=2022, form_factor="PCIe", sms=114, memory_GB=80.0, memory_type="HBM2e",
        bandwidth_GBps=2000.0, fp32_TFLOPs=51.0, tf32_TFLOPs=378.0, fp16_TFLOPs=756.5,
        bf16_TFLOPs=756.5, l2_MB=50.0, smem_per_sm_KB=228.0, nvlink_GBps=600.0, pcie_GBps=128.0,
        sources=(_H100_DATASHEET, _HOPPER_WHITEPAPER, _HOPPER_TUNING),
        match=("h100", "pcie"),
        notes="300-350 W PCIe Gen5 card with 114 of the die's SMs and HBM2e (the 2022 "
              "datasheet; later editions list the H100 NVL instead, which is not this card). "
              "NVLink through a bridge between paired cards. Tensor peaks are half the sparse "
              "figures (1513 → 756.5 TFLOP/s BF16).",
    ),
    "l4": GPUSpec(
        key="l4", name="L4", architecture="Ada Lovelace", compute_capability="8.9",
        year=2023, form_factor="PCIe", sms=58, memory_GB=24.0, memory_type="GDDR6",
        bandwidth_GBps=300.0, fp32_TFLOPs=30.3, tf32_TFLOPs=60.0, fp16_TFLOPs=121.0,
        bf16_TFLOPs=121.0, l2_MB=48.0, smem_per_sm_KB=100.0, nvlink_GBps=None, pcie_GBps=64.0,
        sources=(_L4_DATASHEET, _ADA_WHITEPAPER, _ADA_TUNING, _L4_DEVICE_QUERY),
        match=("l4",),
        notes="72 W low-profile PCIe Gen4 card (the T4's successor, common in Colab and "
              "clouds). The datasheet gives every tensor figure with sparsity (242 TFLOP/s "
              "FP16/BF16, 120 TF32); the table halves them. 58 SMs from a deviceQuery; the L2 "
              "is the AD104 die's 48 MB (Ada whitepaper); shared memory from the Ada tuning "
              "guide. With 300 GB/s against 121 TFLOP/s it is the most memory-starved GPU here.",
    ),
    "h200": GPUSpec(
        key="h200", name="H200 SXM 141GB", architecture="Hopper", compute_capability="9.0",
        year=2024, form_factor="SXM", sms=132, memory_GB=141.0, memory_type="HBM3e",
        bandwidth_GBps=4800.0, fp32_TFLOPs=67.0, tf32_TFLOPs=494.5, fp16_TFLOPs=989.5,
        bf16_TFLOPs=989.5, l2_MB=60.0, smem_per_sm_KB=228.0, nvlink_GBps=900.0, pcie_GBps=128.0,
        sources=(_H200_PAGE, _H200_DEVICE_QUERY, _HOPPER_TUNING),
        match=("h200", "!nvl"),
        notes="Announced November 2023, shipped 2024: the H100 SXM's compute with 141 GB of "
              "HBM3e at 4.8 TB/s, so the same peaks and 43% more bandwidth. NVIDIA publishes "
              "no SM or L2 figure for it: 132 SMs and 60 MB of L2 are what the CUDA driver "
              "reports on an H200 (the H100 SXM reports 50 MB). Shared memory per SM is "
              "Hopper's (tuning guide). The H200 NVL (PCIe) is a different, slower card.",
    ),
    "b200": GPUSpec(
        key="b200", name="B200 (HGX B200)", architecture="Blackwell", compute_capability="10.0",
        year=2024, form_factor="SXM", sms=148, memory_GB=180.0, memory_type="HBM3e",
        bandwidth_GBps=8000.0, fp32_TFLOPs=75.0, tf32_TFLOPs=1125.0, fp16_TFLOPs=2250.0,
        bf16_TFLOPs=2250.0, l2_MB=126.0, smem_per_sm_KB=228.0, nvlink_GBps=1800.0,
        pcie_GBps=128.0,
        sources=(_HGX_PAGE, _DGX_B200_PAGE, _BLACKWELL_TUNING, _B200_CHIPS_AND_CHEESE,
                 _B200_DEVICE_QUERY, _B200_MLPERF_SYSTEM),
        match=("b200",),
        notes="One GPU of an 8-GPU HGX/DGX B200 board (1000 W), two dies seen as one GPU; "
              "announced March 2024. NVIDIA quotes the board: 36 PFLOP/s FP16/BF16 and 18 "
              "TF32 with sparsity, 600 TFLOP/s FP32, 1.44 TB "
              "and 64 TB/s of HBM3e; the table divides by 8 and halves the sparse figures. "
              "The driver reports a 7680-bit bus at 3996 MHz, about 7.7 TB/s, under the "
              "quoted 8 TB/s. 148 SMs from Chips and Cheese and a device query; L2 and shared "
              "memory from the Blackwell tuning guide. PCIe Gen5 x16 to the host in HGX "
              "systems.",
    ),
}


# ----------------------------------------------------------------------------
# Peaks by dtype
# ----------------------------------------------------------------------------

#: dtype → (GPUSpec field, the name error messages use)
_PEAK_FIELDS: dict[object, tuple[str, str]] = {
    torch.float16: ("fp16_TFLOPs", "fp16"),
    torch.bfloat16: ("bf16_TFLOPs", "bf16"),
    torch.float32: ("fp32_TFLOPs", "fp32"),
    "fp16": ("fp16_TFLOPs", "fp16"), "float16": ("fp16_TFLOPs", "fp16"),
    "bf16": ("bf16_TFLOPs", "bf16"), "bfloat16": ("bf16_TFLOPs", "bf16"),
    "fp32": ("fp32_TFLOPs", "fp32"), "float32": ("fp32_TFLOPs", "fp32"),
    "tf32": ("tf32_TFLOPs", "tf32"),
}


def peak_tflops(spec: GPUSpec, dtype: torch.dtype | str) -> float:
    """Dense peak TFLOP/s of ``spec`` for matrix products in ``dtype``.

    ``torch.float16`` / ``torch.bfloat16`` give the tensor-core peaks;
    ``torch.float32`` gives the plain FP32 peak (what PyTorch uses unless
    TF32 is allowed); the string ``"tf32"`` gives the TF32 tensor-core peak.
    Raises ValueError when the GPU has no such peak.
    """
    try:
        field_name, label = _PEAK_FIELDS[dtype]
    except (KeyError, TypeError):
        raise ValueError(
            f"no peak FLOP/s for dtype {dtype!r}: use torch.float16, torch.bfloat16, "
            "torch.float32 or 'tf32'"
        ) from None
    value = getattr(spec, field_name)
    if value is None:
        if spec.key in SPECS:
            hint = " (bf16 needs compute capability 8.0; use fp16)" if label == "bf16" else ""
            raise ValueError(
                f"the {spec.name} (compute capability {spec.compute_capability}) has no "
                f"{label} tensor-core peak{hint}"
            )
        raise ValueError(
            f"the {label} peak of {spec.name} is unknown: this GPU is not in "
            "infer_lib.hardware.SPECS"
        )
    return float(value)


# ----------------------------------------------------------------------------
# Tables for the book
# ----------------------------------------------------------------------------

#: DataFrame column → GPUSpec field, in display order
_COLUMNS: dict[str, str] = {
    "GPU": "name",
    "architecture": "architecture",
    "compute capability": "compute_capability",
    "year": "year",
    "form factor": "form_factor",
    "SMs": "sms",
    "memory (GB)": "memory_GB",
    "memory type": "memory_type",
    "HBM bandwidth (GB/s)": "bandwidth_GBps",
    "FP32 (TFLOP/s)": "fp32_TFLOPs",
    "TF32 dense (TFLOP/s)": "tf32_TFLOPs",
    "FP16 dense (TFLOP/s)": "fp16_TFLOPs",
    "BF16 dense (TFLOP/s)": "bf16_TFLOPs",
    "L2 (MB)": "l2_MB",
    "shared memory per SM (KB)": "smem_per_sm_KB",
    "NVLink (GB/s, bidirectional)": "nvlink_GBps",
    "PCIe (GB/s, bidirectional)": "pcie_GBps",
}


def spec_table(keys=None):
    """The spec table as a pandas DataFrame, one row per GPU (index: the key).

    ``keys`` picks and orders rows (default: all, in launch order). The
    bandwidth column holds GDDR6 bandwidth for the T4 and L4, whose
    ``memory type`` says so. ``source`` is the title of each row's datasheet.
    """
    import pandas as pd  # only the notebooks need pandas

    keys = list(SPECS) if keys is None else list(keys)
    unknown = [k for k in keys if k not in SPECS]
    if unknown:
        raise KeyError(f"no GPU {unknown} in infer_lib.hardware.SPECS; keys are {list(SPECS)}")
    rows = []
    for k in keys:
        spec = SPECS[k]
        row = {column: getattr(spec, field) for column, field in _COLUMNS.items()}
        row["source"] = spec.sources[0][0]
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(keys, name="key"))


def sources_markdown() -> str:
    """Every source the table cites, once each, as a markdown bullet list."""
    seen: dict[tuple[str, str], None] = {}
    for spec in SPECS.values():
        for source in spec.sources:
            seen.setdefault(source, None)
    lines = [f"- [{title}]({url})" if url else f"- {title}" for title, url in seen]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Which GPU is this?
# ----------------------------------------------------------------------------

def _has_word(name: str, word: str) -> bool:
    # Whole words only, so "l4" does not match "NVIDIA L40S" nor "b200" "NVIDIA GB200".
    return re.search(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9])", name) is not None


def match_name(device_name: str) -> GPUSpec | None:
    """The row of ``SPECS`` whose ``match`` words fit ``device_name`` (as
    ``torch.cuda.get_device_name()`` spells it), or None."""
    name = device_name.lower()
    for spec in SPECS.values():
        if all(
            not _has_word(name, word[1:]) if word.startswith("!") else _has_word(name, word)
            for word in spec.match
        ):
            return spec
    return None


#: compute capability → architecture, for GPUs that are not in the table
_ARCHITECTURES = {
    (7, 0): "Volta", (7, 2): "Volta", (7, 5): "Turing",
    (8, 0): "Ampere", (8, 6): "Ampere", (8, 7): "Ampere", (8, 9): "Ada Lovelace",
    (9, 0): "Hopper", (10, 0): "Blackwell", (10, 3): "Blackwell", (11, 0): "Blackwell",
    (12, 0): "Blackwell", (12, 1): "Blackwell",
}


def spec_from_properties(props) -> GPUSpec:
    """A GPUSpec for a GPU outside the table, from ``torch.cuda.get_device_properties``.

    Only what the driver reports is filled in (SMs, memory, capability, L2,
    shared memory per SM); peaks, bandwidth and links are None.
    """
    l2_bytes = getattr(props, "L2_cache_size", None)
    smem_bytes = getattr(props, "shared_memory_per_multiprocessor", None)
    return GPUSpec(
        key=re.sub(r"[^a-z0-9]+", "_", props.name.lower()).strip("_"),
        name=props.name,
        architecture=_ARCHITECTURES.get((props.major, props.minor)),
        compute_capability=f"{props.major}.{props.minor}",
        year=None, form_factor=None,
        sms=props.multi_processor_count,
        memory_GB=round(props.total_memory / 2**30, 1),    # GiB, as the table's capacities are
        memory_type=None, bandwidth_GBps=None,
        fp32_TFLOPs=None, tf32_TFLOPs=None, fp16_TFLOPs=None, bf16_TFLOPs=None,
        l2_MB=l2_bytes / 2**20 if l2_bytes else None,
        smem_per_sm_KB=smem_bytes / 2**10 if smem_bytes else None,
        nvlink_GBps=None, pcie_GBps=None,
        sources=(("torch.cuda.get_device_properties", ""),),
        match=(),
        notes="Not in infer_lib.hardware.SPECS: built from what the driver reports. Peak "
              "FLOP/s and memory bandwidth are unknown; measure them with "
              "infer_lib.measure.matmul_flops and infer_lib.measure.copy_bandwidth.",
    )


def detect() -> GPUSpec | None:
    """The spec of the current GPU: its row of ``SPECS`` when the table has it,
    else one built from the driver's properties; None without a GPU."""
    if not device.HAS_GPU:
        return None
    spec = match_name(torch.cuda.get_device_name())
    if spec is not None:
        return spec
    return spec_from_properties(torch.cuda.get_device_properties(torch.cuda.current_device()))
