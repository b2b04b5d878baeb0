"""`python -m mtajax.run` from an installed (non-editable) copy: configs ship with the package."""

import ast
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


# The layers of mtajax, lowest first (docs/CONVENTIONS.md): a module imports its own layer or lower
# ones, never a higher one. A module's layer is that of its longest prefix listed here ("mtajax":
# the package's __init__ alone).
LAYERS = (
    ("mtajax", "mtajax.platform", "mtajax.dispatch", "mtajax.parallel", "mtajax.locks", "mtajax.results",
     "mtajax.phases", "mtajax.memory"),
    ("mtajax.data", "mtajax.models", "mtajax.tasks", "mtajax.testing"),
    ("mtajax.attacks", "mtajax.directions", "mtajax.worst_case"),
    ("mtajax.evaluate", "mtajax.robust", "mtajax.masking"),
    ("mtajax.train",),
    ("mtajax.loaders", "mtajax.sweep", "mtajax.robust_sweep"),
    ("mtajax.run", "mtajax.run_import", "mtajax.run_report", "mtajax.defend", "mtajax.report"),
)


def _module_names() -> dict[str, pathlib.Path]:
  names = {}
  for path in (ROOT / "mtajax").rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return names


def _import_graph() -> dict[str, set[str]]:
  """Module -> the mtajax modules it imports (anywhere in it, function bodies included)."""
  modules = _module_names()
  graph = {}
  for name, path in modules.items():
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        assert node.level == 0, f"{name}: use absolute imports"
        imported |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names}
    graph[name] = {m for m in imported if m in modules and m != name}
  return graph


def _layer(module: str) -> int:
  prefixes = [(len(p), i) for i, layer in enumerate(LAYERS) for p in layer
              if module == p or (p != "mtajax" and module.startswith(p + "."))]
  assert prefixes, f"{module} is in no layer; add it to LAYERS here and in docs/CONVENTIONS.md"
  return max(prefixes)[1]


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while not component or w != v:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
      if len(component) > 1:
        found.append(component)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_cycles_are_found():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_layering():
  graph = _import_graph()
  upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
            for m in sorted(graph) for d in sorted(graph[m]) if _layer(d) > _layer(m)]
  assert not upward, "imports from a higher layer:\n" + "\n".join(upward)
  cycles = list(_cycles(graph))
  assert not cycles, f"import cycles: {cycles}"
  assert {"mtajax.run_import", "mtajax.train.ensure"} <= set(graph)  # The graph sees the modules.
  assert "mtajax.sweep" in graph["mtajax.robust_sweep"]
