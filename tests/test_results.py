"""The results store: append-only, linear I/O, safe with two writers and after a torn write."""

import json
import multiprocessing
import os
import stat

import pytest

from mtajax import results


def _record(key, **extra):
  return {"key": key, "arp": 1.5, **extra}


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_add_appends_one_line_per_record_and_rejects_duplicates(tmp_path):
  path = tmp_path / "r.jsonl"
  store = results.Store(path)
  store.add(_record("a"))
  size = path.stat().st_size
  store.add(_record("b"))
  assert path.read_bytes()[:size] == (json.dumps(_record("a"), sort_keys=True) + "\n").encode()
  with pytest.raises(ValueError, match="already stored"):
    store.add(_record("a", arp=2.0))
  assert _lines(path) == [_record("a"), _record("b")]
  again = results.Store(path)
  assert len(again) == 2 and again.get("b") == _record("b") and "a" in again


def _io_bytes():
  """(read, written) bytes of this process's read/write system calls so far (Linux)."""
  with open("/proc/self/io") as f:
    counts = dict(line.split(": ") for line in f.read().splitlines())
  return int(counts["rchar"]), int(counts["wchar"])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_ten_thousand_records_cost_linear_io_and_one_fsync_each(tmp_path, monkeypatch):
  path = tmp_path / "r.jsonl"
  store = results.Store(path)
  fsyncs = []
  real_fsync = os.fsync

  def fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):
      fsyncs.append(fd)
    real_fsync(fd)
  monkeypatch.setattr(os, "fsync", fsync)
  read0, written0 = _io_bytes()
  for i in range(10_000):
    store.add(_record(f"k{i}", i=i))
  read1, written1 = _io_bytes()
  size = path.stat().st_size
  assert len(fsyncs) == 10_000
  # Each byte is written once (a rewrite per record would write ~5,000 x the file).
  assert written1 - written0 < 1.1 * size + 100_000
  assert read1 - read0 < 0.1 * size + 100_000  # Only the (empty) tail is re-read per record.
  reread = results.Store(path)
  assert len(reread) == 10_000 and reread.get("k9999")["i"] == 9999
  assert [r["i"] for r in reread.records()] == list(range(10_000))


def _writer(path, name, n, start):
  store = results.Store(path)  # Opened before the other process writes anything.
  start.wait()
  for i in range(n):
    store.add(_record(f"{name}{i}"))
  if "shared" not in store:  # Both want this key: stored once, by whoever comes first.
    store.add(_record("shared"))


def test_two_concurrent_writers_keep_every_record(tmp_path):
  path = tmp_path / "r.jsonl"
  ctx = multiprocessing.get_context("spawn")
  start = ctx.Event()
  procs = [ctx.Process(target=_writer, args=(path, name, 150, start)) for name in "ab"]
  for p in procs:
    p.start()
  start.set()
  for p in procs:
    p.join(120)
  assert [p.exitcode for p in procs] == [0, 0]
  keys = [r["key"] for r in _lines(path)]
  assert len(keys) == 301 and len(set(keys)) == 301
  assert {f"{n}{i}" for n in "ab" for i in range(150)} <= set(keys)


def test_a_store_sees_and_keeps_records_of_another_writer(tmp_path):
  path = tmp_path / "r.jsonl"
  mine, theirs = results.Store(path), results.Store(path)
  theirs.add(_record("t1"))
  mine.add(_record("m1"))  # Reads t1 under the lock, then appends: t1 stays.
  theirs.add(_record("m1", arp=9.0))  # Already stored by the other store: the first one wins.
  assert _lines(path) == [_record("t1"), _record("m1")]
  assert mine.get("t1") == _record("t1") and theirs.get("m1") == _record("m1")


@pytest.mark.parametrize("tail", [b'{"key": "c", "ar', b'{"key": "c", "ar\n', b"\x00" * 40])
def test_torn_last_line_is_dropped_with_a_warning_and_set_aside(tmp_path, tail):
  path = tmp_path / "r.jsonl"
  store = results.Store(path)
  store.add(_record("a"))
  store.add(_record("b"))
  with open(path, "ab") as f:
    f.write(tail)
  with pytest.warns(UserWarning, match="torn last line"):
    store = results.Store(path)
  assert [r["key"] for r in store.records()] == ["a", "b"]
  store.add(_record("c"))
  assert [r["key"] for r in _lines(path)] == ["a", "b", "c"]
  assert (tmp_path / "r.jsonl.torn").read_bytes().rstrip(b"\n") == tail.rstrip(b"\n")


def test_a_bad_line_before_the_end_is_an_error_naming_the_fix(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
  with pytest.raises(ValueError, match="edited by hand"):
    results.Store(path)


def test_non_writing_store_keeps_records_in_memory(tmp_path):
  store = results.Store(tmp_path / "r.jsonl", write=False)
  store.add(_record("a"))
  assert store.get("a") == _record("a") and not (tmp_path / "r.jsonl").exists()


def test_attack_loss_is_part_of_the_key_and_the_default_keeps_old_keys():
  old = results.digest(["m", "pgd", "gbmta", 8.0, 10, "h"])  # the key before the attack-loss axis
  assert results.record_key("m", "pgd", "gbmta", 8, 10, "h") == old
  assert results.record_key("m", "pgd", "gbmta", 8, 10, "h", "default") == old
  assert results.record_key("m", "pgd", "gbmta", 8, 10, "h", "segpgd") != old


def test_store_is_atomic_and_rejects_duplicates(tmp_path):
  store = results.Store(tmp_path / "r.jsonl")
  store.add({"key": "a", "v": 1})
  with pytest.raises(ValueError, match="already stored"):
    store.add({"key": "a", "v": 2})
  assert results.Store(tmp_path / "r.jsonl").records() == [{"key": "a", "v": 1}]
  assert not list(tmp_path.glob(".*tmp*"))


def test_write_atomic_with_two_writers_at_once_and_unchanged_bytes(tmp_path, monkeypatch):
  path = tmp_path / "out.bin"
  replace = os.replace

  def racing(src, dst):  # Another run writes the file just before this one renames its own.
    monkeypatch.setattr(os, "replace", replace)
    assert results.write_atomic(path, b"theirs")
    replace(src, dst)

  monkeypatch.setattr(os, "replace", racing)
  assert results.write_atomic(path, b"mine")
  assert path.read_bytes() == b"mine"
  assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # No temporary file left.
  mtime = path.stat().st_mtime_ns
  assert not results.write_atomic(path, b"mine")  # The same bytes: the file is not touched.
  assert path.stat().st_mtime_ns == mtime
  assert results.write_atomic(path, b"new") and path.read_bytes() == b"new"


# Stored lines of both record kinds as the store wrote them before the schema existed (097e88e):
# records built through `results.GridRecord` / `RobustRecord` must keep those bytes.
_GRID_LINE = (
    '{"adv_training": "none", "arp": 12.5, "arp_per_task": {"depth_zbuffer": 10.0, '
    '"segment_semantic": 15.0}, "attack": "pgd", "attack_loss": "default", "backbone": "small", '
    '"config_hash": "0123456789abcdef", "dataset": "synthetic", "devices": 1, "direction": '
    '"gbmta", "eps": 8.0, "global_batch": 8, "key": "k1", "layout": "L", "layout_idx": 0, '
    '"losses": {"depth_zbuffer": 0.7, "segment_semantic": 1.5}, "metrics": {"depth_zbuffer": '
    '{"abs_err": 0.5}, "segment_semantic": {"miou": 0.25}}, "model": "synthetic-small-L0", '
    '"note": null, "num_steps": 10, "per_device_batch": 8, "sharing_level": 2, "tasks": '
    '["segment_semantic", "depth_zbuffer"], "time_s": 1.25, "train_steps": 20}\n')
_ROBUST_LINE = (
    '{"adv_training": "none", "arp": 80.0, "arp_per_task": {"depth_zbuffer": 80.0}, '
    '"at_last_step": {"apgd:total": null, "pgd:gbmta": 0.5}, "attack": '
    '"robust", "backbone": "small", "candidate_arp": {"apgd:total": null, "pgd:gbmta": 70.0}, '
    '"clean_metrics": {"depth_zbuffer": {"abs_err": 0.5}}, "compile_s": 1.5, '
    '"config_hash": "fedcba9876543210", "converged": false, "dataset": "synthetic", "devices": 1, "direction": null, "envelope": {"depth_zbuffer": 80.0}, '
    '"eps": 4.0, "grid_passes_per_image": 67, "key": "k2", "layout": "L", "layout_idx": null, '
    '"metrics": {"depth_zbuffer": {"abs_err": 0.9}}, "model": "synthetic-small-L0", '
    '"num_steps": 0, "passes_per_image": 41.0, "restart_gain": null, "sharing_level": 2, '
    '"suite": "standard", "tasks": '
    '["depth_zbuffer"], "time_s": 3.5, "trajectory": [{"arp": 80.0, "candidate": "pgd:gbmta", '
    '"passes_per_image": 41.0}], "wins": {"apgd:total": 0, "pgd:gbmta": 2}}\n')
_MODEL = dict(model="synthetic-small-L0", dataset="synthetic", backbone="small", layout="L",
              sharing_level=2, adv_training="none")


def test_grid_and_robust_records_are_stored_as_before_the_schema(tmp_path):
  grid = results.GridRecord(
      key="k1", **_MODEL, layout_idx=0, tasks=["segment_semantic", "depth_zbuffer"],
      attack="pgd", direction="gbmta", eps=8.0, num_steps=10,
      metrics={"segment_semantic": {"miou": 0.25}, "depth_zbuffer": {"abs_err": 0.5}},
      arp=12.5, arp_per_task={"segment_semantic": 15.0, "depth_zbuffer": 10.0},
      config_hash="0123456789abcdef", devices=1, time_s=1.25, train_steps=20,
      attack_loss="default", losses={"segment_semantic": 1.5, "depth_zbuffer": 0.7}, note=None,
      global_batch=8, per_device_batch=8)
  robust = results.RobustRecord(
      key="k2", **_MODEL, layout_idx=None, tasks=["depth_zbuffer"], attack="robust",
      direction=None, eps=4.0, num_steps=0, metrics={"depth_zbuffer": {"abs_err": 0.9}},
      arp=80.0, arp_per_task={"depth_zbuffer": 80.0}, config_hash="fedcba9876543210", devices=1,
      time_s=3.5, suite="standard", clean_metrics={"depth_zbuffer": {"abs_err": 0.5}},
      envelope={"depth_zbuffer": 80.0}, candidate_arp={"pgd:gbmta": 70.0, "apgd:total": None},
      wins={"pgd:gbmta": 2, "apgd:total": 0}, passes_per_image=41.0, grid_passes_per_image=67,
      trajectory=[{"candidate": "pgd:gbmta", "arp": 80.0, "passes_per_image": 41.0}],
      at_last_step={"pgd:gbmta": 0.5, "apgd:total": None}, converged=False, compile_s=1.5)
  store = results.Store(tmp_path / "r.jsonl")
  store.add(grid)
  store.add(robust)
  assert (tmp_path / "r.jsonl").read_text() == _GRID_LINE + _ROBUST_LINE
  assert store.get("k1") == json.loads(_GRID_LINE)  # Held as a reload reads it.
  with pytest.raises(TypeError, match="suite"):  # A field of the other kind is no grid field.
    results.GridRecord(**json.loads(_GRID_LINE), suite="standard")
