"""The small backbone: output shapes and width."""

from flax import nnx
import jax
import jax.numpy as jnp

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import models as M

from fixtures import TASKS3


def test_small_model_shapes_and_width():
  model = nnx.eval_shape(lambda: M.build_model("small", TASKS3, 0, width=8, rngs=nnx.Rngs(0)))
  predict, state = M.pure_predict(model)
  preds = jax.eval_shape(predict, state, jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.float32))
  assert {k: v.shape for k, v in preds.items()} == {k: (8, 16, 16, c) for k, c in TASKS3.items()}
  assert M.block_params("small", "all", 8)[-1] < M.block_params("small", "all", 16)[-1]
