"""components/device_specs.py: the rated peak and the file-name tag of a GPU read off its device name, the
PCIe / NVL parts told apart from the SXM part of the same name."""

import torch

from longer_train.components.device_specs import device_tag, gpu_spec, peak_flops


def test_devices_are_told_apart_by_name():
    assert gpu_spec("NVIDIA H100 80GB HBM3")[1:] == (989.0, 3.35)
    assert gpu_spec("NVIDIA H100 PCIe")[1] == 756.0
    assert gpu_spec("NVIDIA H200")[1:] == (989.0, 4.8) and gpu_spec("NVIDIA H200 NVL")[1] == 835.0
    assert gpu_spec("NVIDIA GeForce RTX 4090") is None
    assert [device_tag(n) for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB",
                                    "NVIDIA GeForce RTX 4090")] == ["h100", "h100-pcie", "a100", "geforce-rtx-4090"]


def test_no_gpu_has_no_rated_peak_and_the_cpu_tag():
    assert peak_flops(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        assert device_tag() == "cpu"
