"""Per-task gradients (the XLA:CPU regression), the loss-function check, the registry, and the
package's import order."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtajax
from mtajax import directions as D
from mtajax import testing


def test_loss_fn_must_be_per_sample():
  x = np.zeros((2, 2, 3, 4), np.float32)
  with pytest.raises(ValueError, match="per-sample"):
    D.total()(lambda x_, y: {"a": jnp.sum(x_)}, x, None)


def test_unknown_direction_names():
  with pytest.raises(ValueError, match="unknown direction"):
    D.by_name("sum")
  assert D.by_name("single_depth_zbuffer") == D.single("depth_zbuffer")


def test_cpu_workaround_keeps_vmapped_per_task_gradients_correct():
  """jaxlib 0.10.2 XLA:CPU computed jit(vmap(vjp)) normals gradients wrongly: the flag is applied.

  This toy net does not trigger the miscompilation itself; the test that does (it fails with
  MTAJAX_CPU_WORKAROUND=0) is tests/test_tasks_loss_fn.py::test_jit_vmap_per_task_gradients_match_eager_loop.
  """
  if jax.default_backend() == "cpu" and jax.lib.__version__ == "0.10.2":
    assert mtajax.CPU_WORKAROUND_ACTIVE
  key = jax.random.PRNGKey(3)
  params = testing.init(key, 3, width=8)
  labels = (params, testing.random_labels(key, params, 4, 16))
  x = jax.random.uniform(key, (4, 16, 16, 3), minval=-100.0, maxval=100.0)
  fast, _ = jax.jit(lambda x_: D.per_task_grads(testing.loss_fn, x_, labels, "vmap"))(x)
  for t, name in enumerate(labels[1]):
    eager = jax.grad(lambda x_, n=name: jnp.mean(testing.loss_fn(x_, labels)[n]))(x)
    rel = float(jnp.max(jnp.abs(fast[t] - eager)) / jnp.max(jnp.abs(eager)))
    assert rel < 1e-4, (name, rel)
    assert float(jnp.mean(jnp.sign(fast[t]) == jnp.sign(eager))) > 0.999, name


def test_direction_registry_errors():
  with pytest.raises(ValueError, match="unknown direction 'nosuch'.*register"):
    D.by_name("nosuch")
  with pytest.raises(ValueError, match="single_<task> is built in"):
    D.register("single_x", D.total)



# Each module of mtajax.directions may import only the modules listed before it (and mtajax.tasks).
ORDER = ("base", "plain", "gbmta", "balancing", "balanced", "switched", "random_task")
ALLOWED_OUTSIDE = {"mtajax.tasks"}


def _mtajax_imports(path):
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtajax"):
      out |= {node.module} if node.module != "mtajax.directions" else {
          f"mtajax.directions.{a.name}" for a in node.names}
    elif isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("mtajax")}
  return out


def test_package_modules_import_only_those_above_them():
  root = pathlib.Path(D.__file__).parent
  assert sorted(p.stem for p in root.glob("*.py") if p.stem != "__init__") == sorted(ORDER)
  for i, name in enumerate(ORDER):
    above = {f"mtajax.directions.{m}" for m in ORDER[:i]}
    bad = {m for m in _mtajax_imports(root / f"{name}.py")
           if m not in above and not any(m.startswith(o) for o in ALLOWED_OUTSIDE)}
    assert not bad, (name, bad)
  assert not _mtajax_imports(root / "balancing.py")  # a leaf
