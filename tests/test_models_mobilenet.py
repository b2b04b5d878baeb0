"""MobileNetV2 backbone: fine blocks against the spec table (reference-spec §8.6)."""

from flax import nnx
import jax
import jax.numpy as jnp

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import models as M


def test_mobilenetv2_fine_blocks_follow_spec_table():
  # reference-spec §8.6: output channels of the 32 fine blocks and the spatial size at 321.
  channels = [32, 32, 16, 96, 96, 24, 24, 144, 144, 32, 32, 32, 192, 192, 64, 64, 64, 64, 384, 384,
              96, 96, 96, 576, 576, 160, 160, 160, 960, 960, 320, 1280]
  strided = {0, 4, 8, 13, 24}
  x = jax.ShapeDtypeStruct((1, 321, 321, 3), jnp.float32)
  size = 321
  for i, factory in enumerate(M.backbone_blocks("mobilenetv2")):
    block = nnx.eval_shape(lambda f=factory: f(rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(nnx.view(block, use_running_average=True))
    x = jax.eval_shape(lambda s, x, g=graphdef: nnx.merge(g, s)(x), state, x)
    size = (size + 1) // 2 if i in strided else size
    assert x.shape == (1, size, size, channels[i]), i
  assert size == 11
