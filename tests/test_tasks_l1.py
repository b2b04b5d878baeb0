"""mtajax.tasks.l1: the masked L1 (keypoint) loss against a NumPy reimplementation of the reference
criterion (spec §3)."""

from mtajax import tasks as mt

from fixtures import check, h, l1_np, make_batch, nearest_np, preds, w


def test_keypoint_loss():
  batch = make_batch(11)
  pred = preds(12, 1)
  g = nearest_np(batch["keypoints2d"], h, w)
  check(mt.MaskedL1(), pred, batch, l1_np(pred, g, g != 255))
