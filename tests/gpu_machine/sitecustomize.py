"""On PYTHONPATH, makes this python look like the GPU machine's: torch + triton + pytest + numpy, and none of
torchrec, fbgemm_gpu, omegaconf, yaml (tests/test_gpu_check.py runs `make gpu-check`'s dry run under it).
GPU_MACHINE_ALSO_MISSING (comma-separated) hides more, e.g. numpy, which the GPU machine may lack too but the
Triton interpreter of the dry run needs. A None in sys.modules is what an absent module looks like to
`import` (ModuleNotFoundError) and to importlib.util.find_spec (None), which torch itself probes."""

import os
import sys

MISSING = ("torchrec", "fbgemm_gpu", "omegaconf", "yaml")

for name in (*MISSING, *filter(None, os.environ.get("GPU_MACHINE_ALSO_MISSING", "").split(","))):
    sys.modules[name] = None
