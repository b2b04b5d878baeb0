"""train.ensure: the model ids and the model fields of a run's records."""

import dataclasses

from configs import quickstart
from mtajax import models
from mtajax import results
from mtajax.train import ensure


def test_model_ids_and_record_fields_of_clean_and_adversarial_models():
  config = quickstart.get_config("smoke")
  clean = ensure.train_config(config, 0)
  adv = ensure.train_config(config, 0, adversarial=True)
  assert ensure.model_id(clean) == "synthetic-small-L0"
  assert ensure.model_id(adv) == "synthetic-small-L0-reference_gbmta_eps8"
  layout = models.resolve_layout(0, 3)
  fields = ensure.record_fields(adv, layout)
  shared = "[{0, 1, 2}]"  # Layout 0: the three tasks share each of the five blocks.
  assert fields == {"model": "synthetic-small-L0-reference_gbmta_eps8", "dataset": "synthetic",
                    "backbone": "small", "layout_idx": 0, "layout": f"[{', '.join([shared] * 5)}]",
                    "sharing_level": 5, "adv_training": "reference:gbmta:eps8",
                    "tasks": ["segment_semantic", "normal", "depth_zbuffer"]}
  schema = {f.name for f in dataclasses.fields(results.Record)}
  assert set(fields) <= schema  # The model part of every record kind.
