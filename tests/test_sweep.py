"""sweep and robust_sweep record keys: a loss or suite whose definition changed never reuses records."""

from configs import quickstart
from mtajax import results
from mtajax import robust
from mtajax import robust_sweep
from mtajax import sweep
from mtajax.tasks import attack_losses
from mtajax.train import ensure


def test_a_revised_attack_loss_gets_new_keys():
  config = quickstart.get_config("smoke")
  t = ensure.train_config(config, 0)
  old = results.record_key(ensure.model_id(t), "pgd", "gbmta", 8.0, config.num_steps,
                           sweep.config_hash(config, t), "segpgd")  # as keyed before revision 2
  assert sweep.key(config, t, "pgd", "gbmta", 8.0, "segpgd") != old
  assert attack_losses.key_name("cospgd") == "cospgd"  # unchanged losses keep their keys
  assert sweep.key(config, t, "pgd", "gbmta", 8.0, "cospgd") == results.record_key(
      ensure.model_id(t), "pgd", "gbmta", 8.0, config.num_steps, sweep.config_hash(config, t),
      "cospgd")


def test_a_redefined_suite_gets_new_robust_keys():
  config = quickstart.get_config("smoke")
  config.robust.suite = "test_redefined"
  t = ensure.train_config(config, 0)
  robust.register_suite("test_redefined", [("fgsm", "total", {})])
  first = robust_sweep.record_key(config, t, 8.0)
  assert robust_sweep.record_key(config, t, 8.0) == first  # stable
  robust.register_suite("test_redefined", [("fgsm", "gbmta", {})])
  assert robust_sweep.record_key(config, t, 8.0) != first
  del robust.SUITES["test_redefined"]
