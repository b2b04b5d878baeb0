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
