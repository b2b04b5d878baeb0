"""Worst-case selection against a NumPy selection, the dataset guarantee and regrouped states."""

import jax.numpy as jnp
import numpy as np

from mtajax import tasks as mt
from mtajax import worst_case
from mtajax.tasks import per_image

H = W = 6
N, C, K = 8, 4, 3  # images, candidates, segmentation classes
GROUPS = np.array([0, 0, 0, 1, 1, 1, 2, 2])  # batches of 3, 3, 2


def labels(seed):
  rng = np.random.default_rng(seed)
  seg = rng.integers(0, K, (N, H, W)).astype(np.int32)
  seg[rng.random((N, H, W)) < 0.2] = 255
  return {"segment_semantic": seg, "normal": rng.uniform(-1, 1, (N, H, W, 3)).astype(np.float32),
          "depth_zbuffer": rng.uniform(0.5, 3, (N, H, W)).astype(np.float32),
          "keypoints2d": rng.uniform(0, 1, (N, H, W)).astype(np.float32)}


def predictions(seed, scale):
  rng = np.random.default_rng(seed)
  return {"segment_semantic": rng.normal(size=(N, H, W, K)).astype(np.float32),
          "normal": rng.normal(size=(N, H, W, 3)).astype(np.float32),
          "depth_zbuffer": rng.uniform(0.5, 3 + scale, (N, H, W, 1)).astype(np.float32),
          "keypoints2d": (rng.uniform(0, 1, (N, H, W, 1)) * scale).astype(np.float32)}


def candidates(tasks, batch, preds):
  """Per-image states (C, N, ...), per-image metrics and scores of hand-made predictions."""
  b = {k: jnp.asarray(v) for k, v in batch.items()}
  st, ms = [], []
  for p in preds:
    s = {t.name: per_image.states(t, jnp.asarray(p[t.name]), b) for t in tasks}
    st.append(s)
    ms.append({t.name: per_image.metrics(t, s[t.name], jnp.asarray(p[t.name]), b) for t in tasks})
  states = {t.name: {k: np.stack([np.asarray(s[t.name][k]) for s in st]) for k in st[0][t.name]}
            for t in tasks}
  return states, ms


def streaming(tasks, batch, pred):
  """Dataset metrics of ``pred`` fed batch by batch as GROUPS says (independent of regrouping)."""
  state = mt.metrics.init(tasks)
  for g in np.unique(GROUPS):
    idx = GROUPS == g
    state = mt.metrics.update(tasks, state, {k: jnp.asarray(v[idx]) for k, v in pred.items()},
                              {k: jnp.asarray(v[idx]) for k, v in batch.items()})
  return mt.metrics.compute(tasks, state)


def test_regrouped_dataset_state_equals_streaming_metrics():
  tasks = mt.synthetic_tasks(3, num_classes=K)
  batch, pred = labels(0), predictions(1, 1.0)
  states, _ = candidates(tasks, batch, [pred])
  got = mt.metrics.compute(tasks, worst_case.dataset_state(
      tasks, {t: {k: v[0] for k, v in s.items()} for t, s in states.items()}, GROUPS))
  want = streaming(tasks, batch, pred)
  for t in want:
    for m in want[t]:
      np.testing.assert_allclose(got[t][m], want[t][m], rtol=1e-5, err_msg=f"{t} {m}")


def test_linear_metric_selection_equals_numpy_argmax():
  # Pixel-weighted L1 error with equal valid counts: the dataset ARP is linear in the per-image
  # errors, so the best selection is the per-image argmax of s_b.
  tasks = (mt.MaskedL1(name="keypoints2d", metric_name="key_err", definition="standard"),)
  batch = labels(2)
  preds = [predictions(10 + c, scale) for c, scale in enumerate([1.0, 1.5, 2.0, 3.0])]
  rng = np.random.default_rng(3)
  for p in preds:  # make different candidates win on different images
    p["keypoints2d"] *= rng.uniform(0.2, 3.0, (N, 1, 1, 1)).astype(np.float32)
  states, ms = candidates(tasks, batch, preds)
  clean = streaming(tasks, batch, preds[0])
  s = np.stack([np.asarray(per_image.score(tasks, m, ms[0], clean)[0]) for m in ms])
  sel = worst_case.select(tasks, states, GROUPS, s, np.ones_like(s, bool),
                          worst_case.arp_objective(tasks, clean))
  np.testing.assert_array_equal(sel.choice, np.argmax(s, axis=0))
  assert len(set(sel.choice)) > 1


def non_additive():
  """Candidates on non-additive metrics, candidate 2 skipped on image 5 (it cannot compete alone):
  (tasks, batch, predictions, states, per-image metrics, clean, scores, available, objective)."""
  tasks = mt.synthetic_tasks(3, num_classes=K)
  batch = labels(4)
  preds = [predictions(20 + c, 1.0 + c) for c in range(C)]
  states, ms = candidates(tasks, batch, preds)
  clean = streaming(tasks, batch, preds[0])
  s = np.stack([np.asarray(per_image.score(tasks, m, ms[0], clean)[0]) for m in ms])
  available = np.ones_like(s, bool)
  available[2, 5] = False
  return tasks, batch, preds, states, ms, clean, s, available, worst_case.arp_objective(tasks, clean)


def test_guarantee_on_non_additive_metrics():
  tasks, batch, preds, states, ms, clean, s, available, objective = non_additive()
  sel = worst_case.select(tasks, states, GROUPS, s, available, objective)
  assert sel.alone[2] is None
  alone = [objective(streaming(tasks, batch, p)) for p in preds]
  for c, v in enumerate(sel.alone):
    if v is not None:
      np.testing.assert_allclose(v, alone[c], rtol=1e-5, atol=1e-4)
      assert sel.value >= v
  assert sel.value > max(alone[c] for c in (0, 1, 3))  # the swaps found something
  assert available[sel.choice, np.arange(N)].all()
  # The reported metrics are those of the chosen predictions evaluated as the data was batched.
  mixed = {k: np.stack([preds[c][k][i] for i, c in enumerate(sel.choice)]) for k in preds[0]}
  want = streaming(tasks, batch, mixed)
  for t in want:
    for m in want[t]:
      np.testing.assert_allclose(sel.metrics[t][m], want[t][m], rtol=1e-5, atol=1e-6)
  for t in tasks:  # the per-task envelope holds the same guarantee for ARP-t
    drops = np.stack([np.asarray(per_image.score(tasks, m, ms[0], clean)[1][t.name]) for m in ms])
    env = worst_case.select(tasks, states, GROUPS, drops, available,
                            worst_case.arp_objective(tasks, clean, t.name))
    assert all(env.value >= v for v in env.alone if v is not None)


def test_accumulate_on_a_hand_made_candidate_sequence():
  # Linear metric (as above): the worst case of the first c candidates is their per-image argmax.
  tasks = (mt.MaskedL1(name="keypoints2d", metric_name="key_err", definition="standard"),)
  batch = labels(2)
  preds = [predictions(10 + c, scale) for c, scale in enumerate([1.0, 1.5, 2.0, 3.0])]
  rng = np.random.default_rng(3)
  for p in preds:
    p["keypoints2d"] *= rng.uniform(0.2, 3.0, (N, 1, 1, 1)).astype(np.float32)
  states, ms = candidates(tasks, batch, preds)
  clean = streaming(tasks, batch, preds[0])
  s = np.stack([np.asarray(per_image.score(tasks, m, ms[0], clean)[0]) for m in ms])
  objective = worst_case.arp_objective(tasks, clean)
  steps = worst_case.accumulate(tasks, states, GROUPS, s, np.ones_like(s, bool), objective)
  assert len(steps) == C
  for c, sel in enumerate(steps, 1):
    np.testing.assert_array_equal(sel.choice, np.argmax(s[:c], axis=0))
    mixed = {k: np.stack([preds[j][k][i] for i, j in enumerate(sel.choice)]) for k in preds[0]}
    np.testing.assert_allclose(sel.value, objective(streaming(tasks, batch, mixed)), rtol=1e-5)


def test_accumulate_never_decreases_and_keeps_the_guarantee():
  tasks, batch, preds, states, _, _, s, available, objective = non_additive()
  steps = worst_case.accumulate(tasks, states, GROUPS, s, available, objective)
  alone = [objective(streaming(tasks, batch, p)) for p in preds]
  for c, sel in enumerate(steps, 1):
    assert np.isfinite(sel.value).all()
    assert all(sel.value >= alone[j] for j in range(c) if j != 2)
    assert sel.choice.max() < c and available[sel.choice, np.arange(N)].all()
    assert c == 1 or sel.value >= steps[c - 2].value
  assert steps[-1].value > max(alone[c] for c in (0, 1, 3))
  assert steps[-1].value >= worst_case.select(tasks, states, GROUPS, s, available, objective).value
