"""build_model: forward shapes of the paper backbones via jax.eval_shape, one-line errors."""

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import models as M

from fixtures import TASKS3, TOY_TASKS, Tiny, tiny_model


@pytest.mark.parametrize("backbone,layout,sizes", [
    ("resnet34", 49, {321: 41, 224: 29}), ("mobilenetv2", 0, {321: 11, 224: 7}),
])
def test_forward_shapes(backbone, layout, sizes):
  model = nnx.eval_shape(lambda: M.build_model(backbone, TASKS3, layout, rngs=nnx.Rngs(0)))
  predict, state = M.pure_predict(model)
  for size, out in sizes.items():
    preds = jax.eval_shape(predict, state, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    assert {k: v.shape for k, v in preds.items()} == {k: (2, out, out, c) for k, c in TASKS3.items()}
    assert all(v.dtype == jnp.float32 for v in preds.values())


def test_build_errors():
  t3 = M.enumerate_layouts(3)
  with pytest.raises(ValueError, match="width applies"):
    M.build_model("resnet34", TOY_TASKS, 0, width=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="out of range"):
    M.build_model("small", TOY_TASKS, 51, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="5 tasks"):
    M.build_model("small", TOY_TASKS, M.enumerate_layouts(5)[0], rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="coarse or 7 fine"):
    M.build_model("small", TOY_TASKS, M.all_shared(3, 4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="coarse_to_fine"):
    tiny_model(M.all_shared(3, 4))
  with pytest.raises(ValueError, match="one head per task"):
    M.BranchedModel([Tiny] * 5, t3[0], {"a": Tiny}, rngs=nnx.Rngs(0))
  assert M.fine_layout("resnet34", str(t3[5]), 3) == M.coarse_to_fine(t3[5], M.coarse_mapping(
      "resnet34"))
