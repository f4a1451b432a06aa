"""On PYTHONPATH, makes this python look like the GPU machine's: torch + triton + pytest + numpy, and none of
torchrec, fbgemm_gpu, omegaconf, yaml (tests/test_gpu_check.py runs `make gpu-check`'s dry run under it)."""

import sys

MISSING = ("torchrec", "fbgemm_gpu", "omegaconf", "yaml")


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r} (the GPU machine has none)", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
