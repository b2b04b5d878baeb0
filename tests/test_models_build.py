"""build_model: forward shapes of the paper backbones via jax.eval_shape."""

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import models as M

from fixtures import TASKS3


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
