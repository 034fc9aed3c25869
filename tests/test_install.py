"""A non-editable install (`pip install .`) finds its configuration data: the policies,
scenarios and machines ship inside the package (dmsim/configs/, pyproject package-data).

Fast and offline: a venv without pip whose site-packages also sees this test venv's
(a .pth line: its packages, not its editable dmsim), then
`pip install --no-deps --no-build-isolation` of a copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_installed_dmsim_finds_its_policies_and_scenarios(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "dmsim", src / "dmsim",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # this venv's packages (click, numba, pip, setuptools, ...) after the new venv's own
    Path(purelib, "test-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", str(src)], check=True, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    run = tmp_path / "elsewhere"  # not the checkout: nothing found relative to the cwd
    run.mkdir()
    out = subprocess.run([venv / "bin" / "dmsim", "policies", "--format", "json"], cwd=run,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    shipped = sorted(p.stem for p in (ROOT / "dmsim" / "configs" / "policies").glob("*.yaml"))
    assert sorted(p["name"] for p in doc["policies"]) == shipped and len(shipped) == 7
    code = ("import dmsim, os\n"
            "from dmsim.gen.scenario import load_scenario, SCENARIO_DIR\n"
            "from dmsim.gen import kernel_calls, modules\n"
            "from dmsim.policy import POLICY_DIR\n"
            "load_scenario('boot')\n"
            "assert len(kernel_calls.default_paths()) == 2 and os.path.exists(modules.DEFAULT_SIZES)\n"
            "assert os.path.exists(os.path.join(os.path.dirname(SCENARIO_DIR), 'machines', 'qemu-2g.yaml'))\n"
            "print(dmsim.__file__); print(POLICY_DIR)\n")
    out = subprocess.run([py, "-c", code], cwd=run, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    installed, policy_dir = out.stdout.split("\n")[:2]
    assert installed.startswith(purelib) and policy_dir.startswith(purelib)
