"""#Params per layout against paper Tables 16/17 and reference-spec §8.5/§8.6/§8.9."""

import jax
import pytest
from flax import nnx

from mtajax import models as M
from mtajax.models.heads import ASPPHead

from fixtures import PAPER_T3, PAPER_T5

# "#Params (M)" column of paper Table 16 (NYUv2, T=3) and Table 17 (Taskonomy, T=5).
PAPER_PARAMS_T3 = {2: 63.83, 9: 63.6, 14: 63.6, 4: 63.6, 23: 63.59, 10: 62.48, 5: 62.48, 28: 62.47,
                   38: 62.25, 41: 61.13, 33: 55.43, 39: 55.43, 42: 54.32, 44: 54.32, 48: 47.5,
                   26: 42.54, 17: 42.54, 34: 42.32, 43: 41.21, 49: 34.39, 0: 21.28}
PAPER_PARAMS_T5 = {4: 106.38, 190: 105.03, 348: 105.02, 200: 104.81, 469: 104.57, 358: 103.68,
                   481: 103.46, 191: 98.21, 959: 96.86, 958: 83.75, 1020: 83.53, 1043: 75.59,
                   1037: 62.48, 0: 21.28}


def test_resnet34_block_sizes_match_spec():
  # reference-spec §8.9 (conv weights + BN γ and β).
  expected = ([9_536] + [73_984] * 3 + [230_144] + [295_424] * 3 + [919_040] + [1_180_672] * 5
              + [3_673_088] + [4_720_640] * 2)
  assert list(M.block_params("resnet34", "all")) == expected
  assert sum(expected) == 21_284_672
  # Paper convention: one value per BN channel, i.e. minus one β per BN channel.
  bn_channels = [64, 128, 128, 128, 384, 256, 256, 256, 768, 512, 512, 512, 512, 512, 1536, 1024,
                 1024]
  assert [a - p for a, p in zip(expected, M.block_params("resnet34"))] == bn_channels


def test_mobilenetv2_size_matches_spec():
  assert sum(M.block_params("mobilenetv2", "all")) == 2_223_872
  assert len(M.block_params("mobilenetv2")) == 32


@pytest.mark.parametrize("num_tasks,paper", [(3, PAPER_PARAMS_T3), (5, PAPER_PARAMS_T5)])
def test_layout_params_reproduce_paper_tables(num_tasks, paper):
  rows = M.layout_table("resnet34", num_tasks, list(paper))
  for row in rows:
    assert abs(row.params_m - paper[row.index]) <= 0.01 + 1e-9, row
  assert M.layout_table("resnet34", num_tasks, [0])[0].params_m == pytest.approx(21.276160)


def test_formatted_table_matches_paper_rows():
  key = ("resnet34", 3)
  text = M.format_layout_table(M.layout_table(*key, M.PAPER_TABLE_INDICES[key])).splitlines()
  assert text[0] == "Model Index #Params (M) Layout"
  for line, index in zip(text[1:], M.PAPER_TABLE_INDICES[key], strict=True):
    label, params, layout = line.split(" ", 2)
    assert label == {0: "AS", 2: "IND"}.get(index, str(index))
    assert abs(float(params) - PAPER_PARAMS_T3[index]) <= 0.01 + 1e-9
    assert layout == PAPER_T3[index]
  key = ("resnet34", 5)
  text = M.format_layout_table(M.layout_table(*key, M.PAPER_TABLE_INDICES[key])).splitlines()
  expected = [PAPER_T5[i] for i in M.PAPER_TABLE_INDICES[key]]
  assert [line.split(" ", 2)[2] for line in text[1:]] == expected
  assert text[1].startswith("IND 106.38 ") and text[-1].startswith("AS 21.28 ")


def test_all_count_is_backbone_sum_over_copies():
  layout = M.enumerate_layouts(3)[5]  # coarse blocks 0-2 have 2 copies, 3-4 have 3
  sizes = M.block_params("resnet34", "all")
  expected = 2 * sum(sizes[:8]) + 3 * sum(sizes[8:])
  assert M.layout_params("resnet34", layout, count="all") == expected
  assert len(M.layout_table("resnet34", 5)) == 7556


@pytest.mark.parametrize("out_ch,expected", [(40, 23_240_864), (3, 23_089_164), (1, 23_080_964),
                                             (17, 23_146_564)])
def test_aspp_head_size(out_ch, expected):
  head = nnx.eval_shape(lambda: ASPPHead(512, out_ch, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(head, nnx.Param)))
  assert n == expected == 4 * (9 * 1024 * 512 + 1024 + 1024 * 1024 + 1024 + 1025 * out_ch)


def test_bad_arguments():
  with pytest.raises(ValueError, match="count"):
    M.block_params("resnet34", "some")
  with pytest.raises(ValueError, match="out of range"):
    M.layout_table("resnet34", 3, [51])
  with pytest.raises(ValueError, match="Unknown backbone"):
    M.block_params("vgg")
