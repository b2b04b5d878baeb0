"""mtajax.tasks.depth: the depth loss against a NumPy reimplementation of the reference criterion
(spec §3), without and with a mask."""

from mtajax import tasks as mt

from fixtures import check, h, l1_np, make_batch, nearest_np, preds, w


def test_depth_loss_without_and_with_mask():
  batch = make_batch(8, masks=False)
  pred = preds(9, 1)
  g = nearest_np(batch["depth_zbuffer"], h, w)
  check(mt.Depth(), pred, batch, l1_np(pred, g, g > 3e-5))
  batch = make_batch(10)
  batch["depth_zbuffer"][1, :4] = 255
  g = nearest_np(batch["depth_zbuffer"], h, w)
  valid = (g != 255) & (nearest_np(batch["depth_zbuffer_mask"], h, w) == 1)
  check(mt.Depth(metric_set="taskonomy"), pred, batch, l1_np(pred, g, valid))
