"""Layouts: TreeMTL enumeration order, paper notation, validation, coarse->fine, sharing level."""

import hashlib
import itertools

import hypothesis
import hypothesis.strategies as st
import pytest

from mtajax.models import layouts as L

from fixtures import PAPER_T3, PAPER_T5

# Reference-spec Appendix A (index 35 is used in paper Table 1 but not printed in Table 16).
SPEC_T3 = {35: "[[{0, 1, 2}], [{0, 1, 2}], [{1}, {0, 2}], [{1}, {2}, {0}], [{1}, {2}, {0}]]"}


def _listing_md5(layouts) -> str:
  lines = [str(len(layouts))] + [f"{i} {layout}" for i, layout in enumerate(layouts)]
  return hashlib.md5(("\n".join(lines) + "\n").encode()).hexdigest()


def _naive_enumeration(num_tasks, num_blocks):
  """TreeMTL's enum_layout_wo_rdt transcribed with lists of sets and the O(n^2) duplicate scan."""

  def equal(a, b):
    return all(all(s in y for s in x) and all(s in x for s in y) for x, y in zip(a, b))

  def divide(task_set):
    out = []
    for pattern in itertools.product([True, False], repeat=len(task_set)):
      if pattern[0] is False and sum(pattern) != 0:
        first = {t for keep, t in zip(pattern, sorted(task_set)) if keep}
        out.append([first, task_set - first])
    return out

  def search(state, num_cut, low, out):
    if num_cut >= num_tasks - 1:
      return
    for i in range(low, num_blocks):
      for task_set in state[i]:
        if len(task_set) == 1:
          continue
        for pair in divide(task_set):
          new = [list(b) for b in state]
          for j in range(i, num_blocks):
            new[j].remove(task_set)
            new[j] += pair
          if not any(equal(new, o) for o in out):
            out.append(new)
            search(new, num_cut + 1, i, out)

  out = [[[set(range(num_tasks))] for _ in range(num_blocks)]]
  search(out[0], 0, 0, out)
  return [str(s) for s in out]


def test_counts_and_reference_md5():
  t5 = L.enumerate_layouts(5)
  t3 = L.enumerate_layouts(3)
  assert len(t3) == 51 and len(t5) == 7556
  # reference-spec §8.2 digests of the reference's printout.
  assert _listing_md5(t3) == "6162d9afe5ccd7ff24aaff5021912fc5"
  assert _listing_md5(t5) == "39adcc93679598f42b8693ab92ec342b"
  assert L.enumerate_layouts(5) is t5  # cached


@pytest.mark.parametrize("num_tasks,num_blocks", [(2, 3), (3, 5), (4, 3), (3, 2)])
def test_matches_naive_transcription(num_tasks, num_blocks):
  got = [str(layout) for layout in L.enumerate_layouts(num_tasks, num_blocks)]
  assert got == _naive_enumeration(num_tasks, num_blocks)


def test_paper_layouts_print_exactly():
  t3, t5 = L.enumerate_layouts(3), L.enumerate_layouts(5)
  for index, text in {**PAPER_T3, **SPEC_T3}.items():
    assert str(t3[index]) == text, index
  for index, text in PAPER_T5.items():
    assert str(t5[index]) == text, index
  assert L.sharing_level(t3[0]) == 5 and L.is_independent(t3[2]) and L.is_independent(t5[4])
  assert t3[0] == L.all_shared(3)


def test_enumeration_is_distinct_and_valid():
  for layouts in (L.enumerate_layouts(3), L.enumerate_layouts(5)):
    assert len(set(layouts)) == len(layouts)
    assert all(layout.num_tasks == layouts[0].num_tasks and layout.num_blocks == 5
               for layout in layouts)


def test_equality_ignores_set_order_and_hashes_alike():
  a = L.parse_layout("[[{0, 1, 2}], [{1}, {0, 2}]]")
  b = L.Layout([[{2, 1, 0}], [{0, 2}, {1}]])
  assert a == b and hash(a) == hash(b) and str(a) != str(b)
  assert a != L.parse_layout("[[{0, 1, 2}], [{2}, {0, 1}]]")


@hypothesis.given(st.integers(0, 7555))
@hypothesis.settings(max_examples=50, deadline=None)
def test_parse_roundtrip(index):
  layout = L.enumerate_layouts(5)[index]
  parsed = L.parse_layout(str(layout))
  assert parsed == layout and str(parsed) == str(layout)
  assert parsed.blocks == layout.blocks  # list order kept too


@pytest.mark.parametrize("text,match", [
    ("[[{0, 1}], [{0}]]", "partition"),
    ("[[{0}, {1}], [{0, 1}]]", "inside one set"),
    ("[[{0, 2}]]", "0..T-1"),
    ("[[{0, 1}, {1}]]", "partition"),
    ("[[{0, 1}, set()]]", "empty"),
    ("[]", "at least one block"),
    ("[[{0, 1}", "Cannot parse"),
    ("[[[0, 1]]]", "sets"),
    ("[[{'a'}]]", "task indices"),
])
def test_validation_errors_are_one_line(text, match):
  with pytest.raises(ValueError, match=match) as info:
    L.parse_layout(text)
  assert "\n" not in str(info.value)


def test_coarse_to_fine_and_group_index():
  coarse = L.enumerate_layouts(3)[5]
  mapping = ((0,), (1, 2, 3), (4, 5, 6, 7), tuple(range(8, 14)), (14, 15, 16))
  fine = L.coarse_to_fine(coarse, mapping)
  assert fine.num_blocks == 17 and fine.num_tasks == 3
  for c, group in enumerate(mapping):
    for f in group:
      assert fine.blocks[f] == coarse.blocks[c]
  assert fine.copies_per_block == (2,) * 8 + (3,) * 9
  assert [fine.group_index(16, t) for t in range(3)] == [0, 2, 1]
  with pytest.raises(ValueError, match="coarse blocks"):
    L.coarse_to_fine(coarse, mapping[:4])
  with pytest.raises(ValueError, match="in order"):
    L.coarse_to_fine(coarse, ((0,), (2,), (1,), (3,), (4,)))


def test_sharing_levels_of_the_transferability_study():
  t3 = L.enumerate_layouts(3)
  # AS/5L ... IND/0L (reference-spec §8.9): layouts 0, 48, 41, 31, 18, 2.
  assert [L.sharing_level(t3[i]) for i in (0, 48, 41, 31, 18, 2)] == [5, 4, 3, 2, 1, 0]
  assert [L.sharing_level(x) for x in t3].count(5) == 1
