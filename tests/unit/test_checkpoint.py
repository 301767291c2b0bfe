"""Checkpoints: atomic files that verify, keep-N pruning, torn and corrupt files skipped."""

import torch

from mpirt import checkpoint


def state(v):
    return {"step": v, "w": torch.full((4,), float(v)), "rng": [{"python": (3, tuple(range(5)), None)}]}


def test_round_trip_and_pruning(tmp_path):
    for step in (5, 10, 15, 20):
        checkpoint.save(tmp_path, step, state(step), keep=2)
    assert checkpoint.list_steps(tmp_path) == [15, 20]
    step, got = checkpoint.load_latest(tmp_path)
    assert step == 20 and torch.equal(got["w"], torch.full((4,), 20.0))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_torn_newest_is_skipped_with_a_warning(tmp_path, capsys):
    checkpoint.save(tmp_path, 1, state(1))
    newest = checkpoint.save(tmp_path, 2, state(2))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    step, got = checkpoint.load_latest(tmp_path)
    assert step == 1 and got["step"] == 1
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "torn" in err


def test_flipped_byte_is_detected(tmp_path, capsys):
    checkpoint.save(tmp_path, 1, state(1))
    newest = checkpoint.save(tmp_path, 2, state(2))
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert checkpoint.load_latest(tmp_path)[0] == 1
    assert "checksum mismatch" in capsys.readouterr().err


def test_foreign_file_and_nothing_usable(tmp_path, capsys):
    checkpoint.path_for(tmp_path, 3).write_bytes(b"PK\x03\x04 a zip, not ours")
    assert checkpoint.load_latest(tmp_path) is None
    assert "bad magic" in capsys.readouterr().err
    assert checkpoint.load_latest(tmp_path / "missing") is None
