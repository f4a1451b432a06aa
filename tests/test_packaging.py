"""Every package of the source tree is declared in pyproject.toml, so a non-editable install is complete."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_declared():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "longer_train").rglob("__init__.py")
    } | {"longer_train.kernels"}
    assert on_disk == declared


def test_kernels_import_without_torchrec():
    import subprocess
    import sys

    code = "import sys; import longer_train.kernels; assert 'torchrec' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
