"""The main job: bad inputs fail cleanly, a sweep killed in every phase loses nothing, and re-runs
on a complete workdir reuse what it holds."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from configs import quickstart
from mtajax import results
from mtajax import robust_sweep
from mtajax import run
from mtajax import run_report
from mtajax import sweep
from mtajax.train import checkpoint
from mtajax.train import ensure

from fixtures import SMOKE_MODEL, SMOKE_STEPS, copy_smoke_sweep, damage, smoke_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(cache: pathlib.Path) -> dict[str, str]:
  return {**os.environ, "MTAJAX_JAX_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def _run(args, cwd, env, timeout=600):
  return subprocess.run([sys.executable, "-m", "mtajax.run", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _records(workdir: pathlib.Path) -> dict[str, dict]:
  lines = (workdir / "results.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert len({r["key"] for r in records}) == len(records), "duplicated records"
  return {r["key"]: r for r in records}


def _comparable(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in ("time_s", "compile_s")}  # wall clocks


PHASES = ("training ", "clean evaluation ", "attacking ", "report: writing ")  # Printed first.


def _kill_at(args, cwd, env, marker: str) -> None:
  """Runs the main job until it prints a line starting with ``marker``, then SIGKILLs it."""
  proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  seen = []
  for line in proc.stdout:
    seen.append(line.rstrip())
    if line.startswith(marker):
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait()
  proc.stdout.close()
  assert proc.returncode == -signal.SIGKILL, f"never reached {marker!r}: {seen[-5:]}"


def _smoke_args(workdir: pathlib.Path, data_dir: pathlib.Path, robust: bool) -> list[str]:
  """The command-line overrides of fixtures.smoke_config, robust suite or not (checked below)."""
  return ["--config", f"{ROOT}/configs/quickstart.py:smoke", "--config.layouts=(0,)",
          "--config.directions=('gbmta',)", "--config.eps=(8.0,)",
          f"--config.train.num_steps={SMOKE_STEPS}", f"--config.train.eval_every={SMOKE_STEPS}",
          f"--config.train.checkpoint_every={SMOKE_STEPS // 2}",
          "--config.train.progress_bar=False", f"--config.robust.enabled={robust}",
          f"--config.workdir={workdir}", f"--config.train.data_dir={data_dir}"]


@pytest.mark.parametrize("robust", [False, True])
def test_smoke_args_are_the_smoke_config(tmp_path, monkeypatch, robust):
  argv = ["mtajax.run", "sweep", *_smoke_args(tmp_path / "work", tmp_path / "tfds", robust)]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv.
  parsed = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=parsed)
  parsed(argv)
  want = smoke_config(tmp_path / "work", tmp_path / "tfds")
  want.robust.enabled = robust
  assert parsed.config.to_dict() == want.to_dict()


def test_sweep_killed_in_every_phase_ends_with_the_same_records(smoke_sweep, tmp_path):
  # The uninterrupted run: the session's smoke sweep (fixtures.smoke_sweep, same config) and its
  # robust record, made here on a copy of it.
  config = copy_smoke_sweep(smoke_sweep, tmp_path / "uninterrupted")
  config.robust.enabled = True
  robust_sweep.run(config)
  want = _records(pathlib.Path(config.workdir))
  assert len(want) == 3  # clean + GB-MTA PGD at ε 8 + robust at the quickstart's robust ε
  # The killed runs keep a cache of their own (JAX writes cache files in place, and they are
  # SIGKILLed): a copy of the shared one, which holds every program the smoke sweep used.
  env = _env(shutil.copytree(os.environ["MTAJAX_JAX_CACHE"], tmp_path / "jax_cache"))
  smoke = _smoke_args(tmp_path / "killed", pathlib.Path(config.train.data_dir), robust=True)
  args = [sys.executable, "-m", "mtajax.run", *smoke]
  for marker in PHASES:  # Each run resumes what the previous one left, then dies in the next phase.
    _kill_at(args, tmp_path, env, marker)
  resumed = _run(smoke, tmp_path, env)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  # The model was complete: not trained again (the log line, not the phase table's "training").
  assert not re.search(r"^training \S+ \(\d+ steps\)", resumed.stdout, re.M), resumed.stdout
  got = _records(tmp_path / "killed")
  assert set(got) == set(want)
  for key, record in want.items():  # Same numbers too: training and evaluation are deterministic.
    assert json.dumps(_comparable(got[key]), sort_keys=True) == json.dumps(_comparable(record),
                                                                           sort_keys=True)
  assert (tmp_path / "killed" / "report" / "report.md").exists()


def _config():
  return quickstart.get_config("smoke")


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c, "eps", (-1.0,)), "eps must hold numbers >= 0"),
    (lambda c: setattr(c, "attacks", ("cw",)), "unknown attack 'cw'"),
    (lambda c: setattr(c, "directions", ("sum",)), "unknown direction 'sum'"),
    (lambda c: setattr(c, "attack_losses", ("segpgdd",)), "unknown attack loss 'segpgdd'"),
    (lambda c: setattr(c.train, "tasks", ("segment_semantic", "albedo")), "albedo"),
    (lambda c: setattr(c, "layouts", ("[[{0, 1}], [{0}, {1, 2}]]",)), "layout"),
    (lambda c: setattr(c, "layouts", (51,)), "51"),
    (lambda c: (setattr(c.train, "dataset", "nyuv2"),
                setattr(c.train, "data_dir", "/nonexistent/tfds")), "does not exist"),
])
def test_bad_config_values_give_one_line_errors(tmp_path, change, message):
  config = _config()
  config.workdir = str(tmp_path)
  store = tmp_path / "results.jsonl"
  store.write_text('{"key": "kept"}\n')
  change(config)
  with pytest.raises(ValueError, match=message) as e:
    if config.train.tasks != _config().train.tasks:
      from mtajax.train import assemble  # pylint: disable=g-import-not-at-top
      assemble.make_tasks(config.train)
    run.run("sweep", config)
  assert "\n" not in str(e.value)
  assert store.read_text() == '{"key": "kept"}\n'  # Existing results untouched.


SMOKE = ["--config", "configs/quickstart.py:smoke"]  # Found from any directory (config_path).
BAD_INPUT = [
    (["--config.nosuch=1"], "unknown config key 'nosuch'"),
    (["--config.eps=(-1.0,)"], "config.eps must hold numbers >= 0"),
    (["--config.eps=abc"], "config.eps must hold numbers >= 0"),
    (["--config.train.num_steps=abc"], "invalid literal for int"),
    (["bogus"], "unknown mode 'bogus'"),
    (["sweep", "train"], "expected at most one mode"),
    (SMOKE + ["--config.nosuch=1"], "unknown config key 'nosuch'"),
    (SMOKE + ["--config.train.nosuch=1"], "unknown config key 'nosuch'"),
    (SMOKE + ["--config.report_eps=-2"], "config.report_eps must hold numbers >= 0"),
    (SMOKE + ["--config.train.lr=abc"], "could not convert string to float"),
    (SMOKE + ["--config.train.lr=-1"], "Need lr > 0"),
    (SMOKE + ["--config.num_steps=0"], "config.num_steps must be >= 1"),
    (SMOKE + ["attack", "--config.attacks=('cw',)"], "unknown attack 'cw'"),
    (["--config", "configs/nosuch.py"], "No such file or directory"),
    (["--config=broken.py"], "invalid syntax"),
]
# `python -m mtajax.run ARGS` for each case in a folder of its own: the imports once, then one
# forked child per case that runs the module as __main__ (what `python -m` does) and exits with its
# status, its stderr in <folder>/stderr.
_FORKED_RUNS = """
import json, os, runpy, sys
import mtajax.run  # noqa: F401  (the imports, done once; JAX's backend is not started)
codes = []
for folder, args in json.loads(sys.argv[1]):
  pid = os.fork()
  if pid == 0:
    os.chdir(folder)
    os.dup2(os.open("stderr", os.O_WRONLY | os.O_CREAT, 0o644), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.argv = ["mtajax.run", *args]
    sys.modules.pop("mtajax.run")  # As under `python -m`: run as __main__ only.
    try:
      runpy.run_module("mtajax.run", run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stderr.flush()
    os._exit(code)
  codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
  """(folder, exit status, stderr) of the main job on each BAD_INPUT case."""
  root = tmp_path_factory.mktemp("bad_input")
  folders = []
  for i, _ in enumerate(BAD_INPUT):
    folders.append(root / str(i))
    folders[-1].mkdir()
    (folders[-1] / "broken.py").write_text("def get_config(:\n")
  cases = [(str(f), args) for f, (args, _) in zip(folders, BAD_INPUT)]
  done = subprocess.run([sys.executable, "-c", _FORKED_RUNS, json.dumps(cases)],
                        env=_env(root / "cache"), capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  codes = json.loads(done.stdout.strip().splitlines()[-1])
  runs = []
  for folder, code in zip(folders, codes):
    stderr = (folder / "stderr").read_text()
    (folder / "stderr").unlink()
    runs.append((folder, code, stderr))
  return runs


@pytest.mark.parametrize("case", range(len(BAD_INPUT)),
                         ids=[m for _, m in BAD_INPUT])
def test_bad_input_to_the_main_job_is_one_error_line_and_status_2(bad_input_runs, case):
  folder, code, stderr = bad_input_runs[case]
  message = BAD_INPUT[case][1]
  lines = stderr.strip().splitlines()
  assert code == 2 and len(lines) == 1, stderr[-2000:]
  assert lines[0].startswith("error: ") and message in lines[0], lines
  assert sorted(p.name for p in folder.iterdir()) == ["broken.py"]  # No data, no model.


def _two_steps(config):
  """The smoke model trained for 2 steps: what these tests check needs no more."""
  t = config.train
  t.num_steps = t.eval_every = t.checkpoint_every = 2
  return config


def test_checkpoint_of_another_layout_is_refused(smoke_sweep, tmp_path):
  config = copy_smoke_sweep(smoke_sweep, tmp_path)
  models = tmp_path / "work" / "models"
  t2 = ensure.train_config(config, 2)
  shutil.copytree(models / SMOKE_MODEL, models / ensure.model_id(t2))  # The layout-0 model.
  with pytest.raises(ValueError, match="different config"):
    ensure.ensure_trained(t2, tmp_path / "work")
  assert (models / ensure.model_id(t2) / "checkpoints").is_dir()  # Nothing deleted.


def test_model_killed_before_its_first_checkpoint_is_trained_again(tmp_path):
  config = _two_steps(_config())
  t = ensure.train_config(config, 0)
  half_written = tmp_path / "models" / ensure.model_id(t) / "checkpoints" / "20.orbax-checkpoint-tmp-1"
  half_written.mkdir(parents=True)
  loaded = ensure.ensure_trained(t, tmp_path)
  assert loaded.step == t.num_steps


@pytest.mark.parametrize("history", [False, True])
def test_report_shows_the_current_configs_records_unless_history_is_asked(tmp_path, monkeypatch,
                                                                          history):
  import mtajax.report  # pylint: disable=g-import-not-at-top
  config = _config()
  config.workdir, config.report_history = str(tmp_path), history
  current = sorted(sweep.current_keys(config))[:3]
  older = config.copy_and_resolve_references()
  older.eps, older.train.num_steps = (2.0,), 10  # An earlier ε grid and step count.
  stale = sorted(sweep.current_keys(older) - set(current))[:2]
  store = results.Store(tmp_path / "results.jsonl")
  for key in current + stale:
    store.add({"key": key, "attack": "pgd", "arp": 1.0})
  seen = []
  monkeypatch.setattr(mtajax.report, "write_report",
                      lambda records, *a, **k: seen.extend(r["key"] for r in records))
  run_report.report(config, store)
  assert sorted(seen) == sorted(current + stale if history else current)


# Re-runs on a complete workdir (the session's smoke sweep, fixtures.smoke_sweep): stored examples
# reused, no model needed (deleted or damaged), and the report from stored records byte-identical to
# the one the fresh run wrote.
@pytest.fixture(scope="module")
def fresh(smoke_sweep):
  """The fresh sweep: (its root, the model's checkpoint dir, the files it wrote)."""
  workdir = smoke_sweep / "work"
  ckpts = workdir / "models" / SMOKE_MODEL / "checkpoints"
  files = {n: (workdir / n).read_bytes() for n in ("results.jsonl", "examples.npz",
                                                    "report/report.md")}
  return smoke_sweep, ckpts, files


def _copy(fresh, tmp_path):
  """A writable copy of the fresh sweep: (its workdir, its config)."""
  config = copy_smoke_sweep(fresh[0], tmp_path)
  return pathlib.Path(config.workdir), config


def _mtimes(workdir: pathlib.Path) -> dict[pathlib.Path, int]:
  return {p: p.stat().st_mtime_ns for p in workdir.rglob("*")
          if p.is_file() and "models" not in p.relative_to(workdir).parts}


def _unchanged(workdir: pathlib.Path, files, mtimes: dict[pathlib.Path, int]) -> None:
  for name, data in files.items():
    assert (workdir / name).read_bytes() == data, name
  # No file rewritten (examples, report, figures, records), so a read-only workdir would do.
  assert _mtimes(workdir) == mtimes


def test_report_from_stored_records_equals_the_fresh_one(fresh, tmp_path):
  _, _, files = fresh
  workdir, config = _copy(fresh, tmp_path)
  (workdir / "report" / "report.md").unlink()
  run.run("report", config)
  assert (workdir / "report" / "report.md").read_bytes() == files["report/report.md"]


@pytest.mark.parametrize("mode", ["sweep", "attack"])
def test_rerun_reuses_the_examples_and_needs_no_model(fresh, tmp_path, mode):
  _, ckpts, files = fresh
  workdir, config = _copy(fresh, tmp_path)
  mtimes = _mtimes(workdir)
  shutil.rmtree(workdir / "models")  # Every record is stored: no model is needed...
  run.run(mode, config)
  _unchanged(workdir, files, mtimes)
  assert not (workdir / "models").exists()  # ...so none is trained again.
  shutil.copytree(ckpts.parent, workdir / "models" / ckpts.parent.name)
  damage(workdir / "models" / ckpts.parent.name / "checkpoints" / str(SMOKE_STEPS), "flip")
  run.run(mode, config)  # Nor loaded: its damaged final step is not read.
  _unchanged(workdir, files, mtimes)


def test_damaged_model_with_records_missing_names_the_step_to_delete(fresh, tmp_path):
  _, ckpts, _ = fresh
  workdir, config = _copy(fresh, tmp_path)
  results = workdir / "results.jsonl"
  results.write_text("".join(results.read_text().splitlines(keepends=True)[:-1]))
  step = workdir / "models" / ckpts.parent.name / "checkpoints" / str(SMOKE_STEPS)
  damage(step, "flip")
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=f"delete {step} to resume from the previous step"):
    run.run("attack", config)

