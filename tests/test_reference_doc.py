"""Every "spec §n" and "Qnn" the code and README cite is described in docs/reference.md."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cited() -> set[str]:
  files = [*ROOT.glob("mtajax/**/*.py"), *ROOT.glob("configs/*.py"), ROOT / "README.md"]
  text = "\n".join(p.read_text() for p in files)
  sections = {f"§{m}" for m in re.findall(r"spec §(\d+(?:\.\d+)?)", text)}
  return sections | set(re.findall(r"\b(Q\d+)\b", text))


def test_every_citation_resolves_in_docs_reference():
  doc = (ROOT / "docs" / "reference.md").read_text()
  described = set(re.findall(r"^#+ (§\d+(?:\.\d+)?)", doc, re.M))
  described |= set(re.findall(r"^\* \*\*(§\d+(?:\.\d+)?)", doc, re.M))
  described |= set(re.findall(r"^\| (Q\d+) \|", doc, re.M))
  cited = _cited()
  assert len(cited) > 40
  assert not cited - described, sorted(cited - described)
