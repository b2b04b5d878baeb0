"""Writes ``tiny_checkpoint.model``: a TreeMTL-format checkpoint of a toy model (needs torch).

    python tests/torch_reference/make_checkpoint_fixture.py

Like TreeMTL's ``Trainer.save_model`` it is ``torch.save({'iter', 'state_dict', 'layout',
'optimizer', 'scheduler'})``, with a ``main.layout.Layout`` object in it. The state_dict holds
float32, float16, bool and int64 tensors, a 0-d tensor and a strided view into a shared storage;
values are ``arange``-based so the tests know them without torch.
"""

import collections
import pathlib
import sys
import types

import torch


class Layout:  # Pickled as main.layout.Layout, the class TreeMTL checkpoints hold.
  def __init__(self, state):
    self.T, self.B, self.state = 2, len(state), state
    self.num_cut, self.lowest_avail_cut, self.metric_list, self.score = 1, 1, [0.0, 0.0], 0.0


def main() -> None:
  module = types.ModuleType("main.layout")
  module.Layout = Layout
  Layout.__module__ = "main.layout"
  sys.modules["main"] = types.ModuleType("main")
  sys.modules["main.layout"] = module
  conv = torch.nn.Conv2d(2, 3, 3)
  with torch.no_grad():
    conv.weight.copy_(torch.arange(54, dtype=torch.float32).reshape(3, 2, 3, 3) / 10)
    conv.bias.copy_(torch.tensor([-1.0, 0.5, 2.0]))
  base = torch.arange(10, dtype=torch.float32)
  state_dict = collections.OrderedDict([
      ("conv.weight", conv.weight.detach().clone()), ("conv.bias", conv.bias.detach().clone()),
      ("bn.num_batches_tracked", torch.tensor(7)),
      ("view", base[1:9:3]), ("view2", base.reshape(2, 5).t()),
      ("half", torch.arange(4, dtype=torch.float16) / 4),
      ("mask", torch.tensor([True, False, True]))])
  optimizer = torch.optim.Adam(conv.parameters(), lr=1e-3)
  conv(torch.ones(1, 2, 3, 3)).sum().backward()
  optimizer.step()
  scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 4000, 0.5)
  checkpoint = {"iter": 20000, "state_dict": state_dict,
                "layout": Layout([[{0, 1}], [{0}, {1}]]),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
  torch.save(checkpoint, pathlib.Path(__file__).with_name("tiny_checkpoint.model"))


if __name__ == "__main__":
  main()
