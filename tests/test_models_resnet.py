"""ResNet-34 backbone: projection shortcuts and initialisation (reference-spec §8.4)."""

from flax import nnx
import numpy as np
import pytest

import mtajax  # noqa: F401  (XLA:CPU workaround before JAX initialises)
from mtajax import models as M


def test_resnet34_projection_shortcuts_and_init():
  blocks = [nnx.eval_shape(lambda f=f: f(rngs=nnx.Rngs(0))) for f in M.backbone_blocks("resnet34")]
  with_projection = [i for i, b in enumerate(blocks[1:], 1) if b.down_conv is not None]
  assert with_projection == [4, 8, 14]  # first block of layer2, layer3, layer4 (spec §8.4)
  stem = M.backbone_blocks("resnet34")[0](rngs=nnx.Rngs(0))
  assert stem.conv.kernel.shape == (7, 7, 3, 64)
  assert float(np.std(stem.conv.kernel[...])) == pytest.approx(0.01, rel=0.05)
  np.testing.assert_array_equal(stem.bn.scale[...], 1.0)
  np.testing.assert_array_equal(stem.bn.bias[...], 0.0)
