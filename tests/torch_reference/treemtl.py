"""A PyTorch transcription of TreeMTL's layout models, written for mtajax's conversion tests.

Not part of the mtajax package and not TreeMTL's code: a re-implementation with the same module
structure, forward pass and ``state_dict`` key names as

* ``Deeplab_ASPP_Layout`` (TreeMTL ``main/models.py``; the class MTLAttack-DGBA imports for NYUv2
  with ResNet34 and for adversarial training): keys
  ``backbone.mtl_blocks.K.residual_block.{0,1}.*`` (stem) and
  ``backbone.mtl_blocks.K.residual_block.{block.conv1,block.bn1,block.conv2,block.bn2,ds.0,
  ds.1}.*``;
* ``MTSeqModel`` (TreeMTL ``main/auto_models.py``, blocks cut from
  ``models/deeplab_resnet34_adashare.prototxt`` or ``models/mobilenetv2.prototxt``): keys
  ``backbone.mtl_blocks.K.compute_nodes.J.basicOp.*``, where ``J`` counts every prototxt layer of
  the block (ReLU, pooling and additions included, they just have no parameters);
* both with TreeMTL's ``ASPPHeadNode`` heads: ``heads.<task>.fc{1..4}.conv{1,2,3}.{weight,bias}``.

``K`` counts block copies in TreeMTL's order: fine block by fine block, and within a block in the
list order of the layout's task sets. Layouts are passed as TreeMTL's fine ``state``: a list (one
entry per fine block) of lists of task sets.

Checked against TreeMTL commit 70d26aafb60031d267812b3a9bb4c4bde87e01a4 (github.com/zhanglijun95/
TreeMTL, which carries no licence file, so none of its code is copied here): the real classes were
built from a clone of that commit (its ``proto/pytorch_pb2.py`` needs protobuf's pure-Python
implementation) for AS, IND and layout 5 of each backbone, and ``check_treemtl.py`` (next to this
file) compared ``state_dict`` key names, order and shapes and, after loading the real model's
weights into the transcription, the eval outputs of every head (identical to float32 rounding).
A fresh clone reproduces that check with ``python tests/torch_reference/check_treemtl.py
/path/to/TreeMTL``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

FineLayout = Sequence[Sequence[set[int]]]
ASPP_RATES = (6, 12, 18, 24)


class Classification_Module(nn.Module):  # pylint: disable=invalid-name  (TreeMTL's name)
  """One ASPP branch: dilated conv3×3 → ReLU → Dropout → conv1×1 → ReLU → Dropout → conv1×1."""

  def __init__(self, in_ch: int, out_ch: int, rate: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, 1024, 3, padding=rate, dilation=rate)
    self.conv2 = nn.Conv2d(1024, 1024, 1)
    self.conv3 = nn.Conv2d(1024, out_ch, 1)
    self.dropout = nn.Dropout(0.5)

  def forward(self, x):
    x = self.dropout(torch.relu(self.conv1(x)))
    x = self.dropout(torch.relu(self.conv2(x)))
    return self.conv3(x)


class ASPPHeadNode(nn.Module):
  """The sum of four branches ``fc1``..``fc4`` with dilation rates 6, 12, 18, 24."""

  def __init__(self, in_ch: int, out_ch: int):
    super().__init__()
    for i, rate in enumerate(ASPP_RATES):
      setattr(self, f"fc{i + 1}", Classification_Module(in_ch, out_ch, rate))

  def forward(self, x):
    return sum(getattr(self, f"fc{i + 1}")(x) for i in range(len(ASPP_RATES)))


class LayoutBackbone(nn.Module):
  """``mtl_blocks``: one copy of fine block ``i`` per task set of ``layout[i]``, wired as a tree.

  The parent of a copy is the first copy of the previous block whose task set contains its own.
  """

  def __init__(self, blocks: Sequence[Callable[[], nn.Module]], layout: FineLayout):
    super().__init__()
    if len(blocks) != len(layout):
      raise ValueError(f"{len(blocks)} blocks but a {len(layout)}-block layout")
    self.task_sets, self.parents, self.layer_of, copies = [], [], [], []
    for i, (factory, task_sets) in enumerate(zip(blocks, layout)):
      for task_set in task_sets:
        self.parents.append(None if i == 0 else next(
            k for k in range(len(copies))
            if self.layer_of[k] == i - 1 and set(task_set) <= self.task_sets[k]))
        self.task_sets.append(set(task_set))
        self.layer_of.append(i)
        copies.append(factory())
    self.mtl_blocks = nn.ModuleList(copies)
    self.num_tasks = sum(len(s) for s in layout[0])
    self.last = len(layout) - 1

  def forward(self, x):
    outputs, features = [], [None] * self.num_tasks
    for k, block in enumerate(self.mtl_blocks):
      outputs.append(block(x if self.parents[k] is None else outputs[self.parents[k]]))
      if self.layer_of[k] == self.last:
        for t in self.task_sets[k]:
          features[t] = outputs[k]
    return features


class LayoutModel(nn.Module):
  """``backbone`` (a :class:`LayoutBackbone`) + ``heads`` (task name → ASPPHeadNode)."""

  def __init__(self, blocks, layout: FineLayout, cls_num: Mapping[str, int], feature_dim: int):
    super().__init__()
    self.backbone = LayoutBackbone(blocks, layout)
    self.heads = nn.ModuleDict({t: ASPPHeadNode(feature_dim, n) for t, n in cls_num.items()})

  def forward(self, x):
    features = self.backbone(x)
    return {t: head(features[i]) for i, (t, head) in enumerate(self.heads.items())}


def _bn(ch: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(ch)


def _conv(in_ch, out_ch, kernel, stride=1, padding=0, dilation=1, groups=1) -> nn.Conv2d:
  return nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias=False)


# ResNet34 stages: (width, blocks, stride, dilation); a stage's first block gets the projection
# shortcut when its stride or width changes or the dilation is 2 or 4 (TreeMTL's rule).
_RESNET34_STAGES = ((64, 3, 1, 1), (128, 4, 2, 1), (256, 6, 1, 2), (512, 3, 1, 4))


def _resnet34_units():
  """(in, out, stride, dilation, projection) of the 16 BasicBlocks."""
  units, in_ch = [], 64
  for width, n, stride, dilation in _RESNET34_STAGES:
    for b in range(n):
      first = b == 0
      projection = first and (stride != 1 or in_ch != width or dilation in (2, 4))
      units.append((in_ch, width, stride if first else 1, dilation, projection))
      in_ch = width
  return units


# -- Deeplab_ASPP_Layout -------------------------------------------------------------------------

class BasicBlock(nn.Module):
  """conv1 → bn1 → ReLU → conv2 → bn2 (the shortcut is added by :class:`ResidualBlock`)."""

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1):
    super().__init__()
    self.conv1 = _conv(in_ch, out_ch, 3, stride, dilation, dilation)
    self.bn1 = _bn(out_ch)
    self.conv2 = _conv(out_ch, out_ch, 3, 1, dilation, dilation)
    self.bn2 = _bn(out_ch)

  def forward(self, x):
    return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class ResidualBlock(nn.Module):
  """ReLU(ds(x) + block(x)); ``ds`` is None (identity) or Sequential(conv1×1, BN)."""

  def __init__(self, block: nn.Module, ds: nn.Module | None):
    super().__init__()
    self.block = block
    self.ds = ds

  def forward(self, x):
    return torch.relu((x if self.ds is None else self.ds(x)) + self.block(x))


class LayoutBlock(nn.Module):
  """A block copy of ``Deeplab_ASPP_Layout``: the block is held as ``residual_block``."""

  def __init__(self, residual_block: nn.Module):
    super().__init__()
    self.residual_block = residual_block

  def forward(self, x):
    return self.residual_block(x)


def _deeplab_stem() -> nn.Module:
  return LayoutBlock(nn.Sequential(_conv(3, 64, 7, 2, 3), _bn(64), nn.ReLU(),
                                   nn.MaxPool2d(3, 2, 1, ceil_mode=True)))


def _deeplab_unit(in_ch, out_ch, stride, dilation, projection) -> Callable[[], nn.Module]:
  def make():
    ds = nn.Sequential(_conv(in_ch, out_ch, 1, stride), _bn(out_ch)) if projection else None
    return LayoutBlock(ResidualBlock(BasicBlock(in_ch, out_ch, stride, dilation), ds))
  return make


def Deeplab_ASPP_Layout(layout: FineLayout, cls_num: Mapping[str, int]) -> LayoutModel:  # pylint: disable=invalid-name
  """TreeMTL's hand-written Deeplab-ResNet34 layout model with ASPP heads (17 fine blocks)."""
  blocks = [_deeplab_stem] + [_deeplab_unit(*u) for u in _resnet34_units()]
  return LayoutModel(blocks, layout, cls_num, 512)


# -- MTSeqModel ----------------------------------------------------------------------------------

class Add(nn.Module):
  """The prototxt's Eltwise SUM."""

  def forward(self, a, b):
    return a + b


class ComputeNode(nn.Module):
  """One prototxt layer: its op is ``basicOp``; ``inputs`` index the block's earlier node outputs
  (-1 = the block's input)."""

  def __init__(self, op: nn.Module, *inputs: int):
    super().__init__()
    self.basicOp = op  # pylint: disable=invalid-name  (TreeMTL's name)
    self.inputs = inputs


class ComputeBlock(nn.Module):
  """A fine block of ``MTSeqModel``: its prototxt layers in file order, as ``compute_nodes``."""

  def __init__(self, nodes: Sequence[ComputeNode]):
    super().__init__()
    self.compute_nodes = nn.ModuleList(nodes)

  def forward(self, x):
    outputs = []
    for node in self.compute_nodes:
      outputs.append(node.basicOp(*[x if i < 0 else outputs[i] for i in node.inputs]))
    return outputs[-1]


def _relu() -> nn.Module:
  return nn.ReLU()


def _seq_resnet_unit(in_ch, out_ch, stride, dilation, projection) -> Callable[[], nn.Module]:
  """The prototxt writes a projection shortcut (conv, BN) before the residual branch."""
  def make():
    nodes = []
    if projection:
      nodes += [ComputeNode(_conv(in_ch, out_ch, 1, stride), -1), ComputeNode(_bn(out_ch), 0)]
    s = len(nodes)
    nodes += [ComputeNode(_conv(in_ch, out_ch, 3, stride, dilation, dilation), -1),
              ComputeNode(_bn(out_ch), s), ComputeNode(_relu(), s + 1),
              ComputeNode(_conv(out_ch, out_ch, 3, 1, dilation, dilation), s + 2),
              ComputeNode(_bn(out_ch), s + 3),
              ComputeNode(Add(), 1 if projection else -1, s + 4), ComputeNode(_relu(), s + 5)]
    return ComputeBlock(nodes)
  return make


def _seq_resnet_stem() -> nn.Module:
  return ComputeBlock([ComputeNode(_conv(3, 64, 7, 2, 3), -1), ComputeNode(_bn(64), 0),
                       ComputeNode(_relu(), 1),
                       ComputeNode(nn.MaxPool2d(3, 2, 1, ceil_mode=True), 2)])


def _conv_bn(in_ch, out_ch, kernel=1, stride=1, depthwise=False, relu=True):
  def make():
    nodes = [ComputeNode(_conv(in_ch, out_ch, kernel, stride, kernel // 2,
                               groups=in_ch if depthwise else 1), -1),
             ComputeNode(_bn(out_ch), 0)]
    return ComputeBlock(nodes + ([ComputeNode(_relu(), 1)] if relu else []))
  return make


def _inverted_residual(ch: int, hidden: int):
  def make():
    return ComputeBlock([
        ComputeNode(_conv(ch, hidden, 1), -1), ComputeNode(_bn(hidden), 0),
        ComputeNode(_relu(), 1),
        ComputeNode(_conv(hidden, hidden, 3, 1, 1, groups=hidden), 2),
        ComputeNode(_bn(hidden), 3), ComputeNode(_relu(), 4),
        ComputeNode(_conv(hidden, ch, 1), 5), ComputeNode(_bn(ch), 6), ComputeNode(Add(), -1, 7)])
  return make


# MobileNetV2 stages of the prototxt: (expansion, channels, units, stride). The first unit of a
# stage is cut into expand / depthwise / project blocks; the other units stay whole (residual).
_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))


def _mobilenetv2_blocks():
  blocks, in_ch = [_conv_bn(3, 32, 3, 2)], 32
  for t, c, n, s in _MOBILENETV2_STAGES:
    hidden = in_ch * t
    if t != 1:
      blocks.append(_conv_bn(in_ch, hidden))
    blocks += [_conv_bn(hidden, hidden, 3, s, depthwise=True), _conv_bn(hidden, c, relu=False)]
    blocks += [_inverted_residual(c, c * t) for _ in range(n - 1)]
    in_ch = c
  return blocks + [_conv_bn(in_ch, 1280)]


def MTSeqModel(prototxt: str, layout: FineLayout, cls_num: Mapping[str, int]) -> LayoutModel:  # pylint: disable=invalid-name
  """TreeMTL's prototxt-built layout model; ``prototxt`` names the backbone file's stem."""
  if prototxt == "deeplab_resnet34_adashare":
    return LayoutModel([_seq_resnet_stem] + [_seq_resnet_unit(*u) for u in _resnet34_units()],
                       layout, cls_num, 512)
  if prototxt == "mobilenetv2":
    return LayoutModel(_mobilenetv2_blocks(), layout, cls_num, 1280)
  raise ValueError(f"unknown prototxt {prototxt!r}")


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Random weights (variance-preserving convs) and random BatchNorm statistics, in eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * fan_in ** -0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
      elif isinstance(m, nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(torch.rand(n, generator=g) + 0.5)
        m.bias.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
        m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=g)))
  return model.eval()
