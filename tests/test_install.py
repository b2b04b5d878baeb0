"""`python -m mtajax.run` from an installed (non-editable) copy: configs ship with the package."""

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_main_job_runs_from_the_built_package_alone(tmp_path):
  src = tmp_path / "src"
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
  for name in ("mtajax", "configs"):
    shutil.copytree(ROOT / name, src / name, ignore=ignore)
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, src / name)
  build = tmp_path / "build"
  # What `pip install .` puts into site-packages (setuptools' build_py of the same config).
  subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build",
                  "--build-base", str(build)], cwd=src, check=True, capture_output=True)
  lib = next(build.glob("lib*"))
  assert sorted(p.name for p in lib.iterdir()) == ["configs", "mtajax"]
  shutil.rmtree(src)  # Nothing of the source tree is left to find.
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  env = {**os.environ, "PYTHONPATH": str(lib), "MTAJAX_JAX_CACHE": str(tmp_path / "cache")}

  def main_job(*args):
    return subprocess.run([sys.executable, "-m", "mtajax.run", "layouts", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, check=False, timeout=300)
  for args in ((), ("--config", "configs/nyuv2_resnet34.py:smoke")):
    out = main_job(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "workdir runs/" in out.stdout and "IND" in out.stdout
  where = subprocess.run([sys.executable, "-c", "import mtajax, configs; "
                          "print(mtajax.__file__, *configs.__path__)"], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
  assert all(p.startswith(str(lib)) for p in where), where
  out = main_job("--config", "configs/nosuch.py")
  assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr[-2000:]
