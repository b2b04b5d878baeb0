"""The README's example runs, and .ci/run runs the README's test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _block_after(marker: str) -> str:
  text = (ROOT / "README.md").read_text()
  match = re.search(re.escape(marker) + r"\s*```[a-z]*\n(.*?)```", text, re.S)
  assert match, f"README.md has no code block after {marker}"
  return match.group(1)


def test_readme_example_runs(capsys):
  exec(compile(_block_after("<!-- readme-example -->"), "README example", "exec"), {})  # pylint: disable=exec-used
  assert "(4, 8, 8, 3)" in capsys.readouterr().out


def test_ci_runs_the_readme_test_command():
  command = _block_after("<!-- readme-test-command -->").strip()
  assert "pip install" in command and "pytest" in command
  assert "readme-test-command" in (ROOT / ".ci" / "run").read_text()
