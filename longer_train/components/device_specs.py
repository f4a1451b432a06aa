"""Datasheet figures of the GPUs we know, matched in `torch.cuda.get_device_name()`: the dense bf16 peak (the
denominator of MFU in the trainer's metrics and in `make gpu-check`) and the HBM bandwidth, and the short name
that gpu-check's output files carry. Imports torch only (the GPU machine's python has little else)."""

from __future__ import annotations

import re

import torch

# (name fragment, dense bf16 TFLOP/s without sparsity, HBM TB/s), vendor datasheets; the first fragment found in
# the device name wins, so the PCIe / NVL parts come before the SXM part of the same name
GPUS = [
    ("H100 PCIe", 756.0, 2.0),
    ("H100 NVL", 835.0, 3.9),
    ("H200 NVL", 835.0, 4.8),
    ("H200", 989.0, 4.8),
    ("H100", 989.0, 3.35),
    ("A100", 312.0, 2.0),
    ("L40S", 362.0, 0.864),
]


def gpu_spec(name: str) -> tuple[str, float, float] | None:
    """(fragment, bf16 TFLOP/s, HBM TB/s) of the first `GPUS` entry in the device name `name`, None if none."""
    return next((spec for spec in GPUS if spec[0] in name), None)


def peak_flops(device: torch.device) -> float | None:
    """The device's rated dense bf16 peak in FLOP/s, None where unknown (CPU, other GPUs)."""
    if device.type != "cuda":
        return None
    spec = gpu_spec(torch.cuda.get_device_name(device))
    return spec[1] * 1e12 if spec else None


def device_tag(name: str | None = None) -> str:
    """Short lower-case name of a device for file names: the `GPUS` fragment it matches ("h100", "h100-pcie"),
    else its name without the vendor, "cpu" without a GPU. `name` defaults to this process's CUDA device."""
    if name is None:
        if not torch.cuda.is_available():
            return "cpu"
        name = torch.cuda.get_device_name()
    spec = gpu_spec(name)
    text = spec[0] if spec else re.sub(r"^nvidia\s+", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"
