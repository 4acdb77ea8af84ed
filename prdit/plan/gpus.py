"""The GPUs `prdit plan --gpu` knows: dense peak throughput per precision and memory, in one table.

Peaks are the vendors' dense (no sparsity) figures in TFLOP/s and HBM bandwidth in TB/s; memory is what torch reports as the device's
total (GiB). Throughput actually reached is peak x model-FLOPs utilisation (MFU, see prdit.plan.cost).
"""

from __future__ import annotations

from dataclasses import dataclass

MEM_FRACTION = 0.92  # of the GPU's memory a job may plan for (allocator fragmentation)
CUDA_OVERHEAD_GIB = 1.0  # CUDA context, cuBLAS/cuDNN workspaces: not tensors, not seen on fake tensors


@dataclass(frozen=True)
class GPU:
    key: str
    label: str
    bf16_tflops: float  # tensor cores, bf16 in / fp32 accumulate
    tf32_tflops: float  # tensor cores, fp32 tensors with torch.set_float32_matmul_precision("high")
    fp32_tflops: float  # strict fp32 (CUDA cores), matmul precision "highest"
    mem_gib: float
    bandwidth_tbs: float  # HBM, TB/s

    def peak(self, precision: str) -> float:
        """Peak FLOP/s of `precision` (bf16, tf32 or fp32)."""
        return {"bf16": self.bf16_tflops, "tf32": self.tf32_tflops, "fp32": self.fp32_tflops}[
            precision
        ] * 1e12


GPUS = {
    g.key: g
    for g in (
        GPU("h100", "NVIDIA H100 SXM5 80 GB", 989.4, 494.7, 66.9, 79.1, 3.35),
        GPU("h100-pcie", "NVIDIA H100 PCIe 80 GB", 756.0, 378.0, 51.2, 79.1, 2.0),
        GPU("h200", "NVIDIA H200 SXM 141 GB", 989.4, 494.7, 66.9, 139.8, 4.8),
        GPU("a100", "NVIDIA A100 SXM4 80 GB", 312.0, 156.0, 19.5, 79.1, 2.04),
    )
}

# torch.cuda.get_device_name() substrings -> key, first match wins (the PCIe H100 before the SXM one)
DEVICE_NAMES = (("H100 PCIe", "h100-pcie"), ("H100 80GB HBM3", "h100"), ("H200", "h200"), ("A100", "a100"))


def key_of(device_name: str) -> str | None:
    """The GPUS key of a CUDA device by its name (torch.cuda.get_device_name), None if not in the table."""
    return next((key for part, key in DEVICE_NAMES if part in device_name), None)
