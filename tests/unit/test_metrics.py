"""mpirt train's per-step metrics: JSON lines, and the bar a terminal shows."""

import io
import json

from mpirt.metrics import Metrics


def record(step: int) -> dict:
    return {"step": step, "loss": 2.5 / step, "samples_per_s": 31234.5, "step_time_s": 0.0021, "comm_s": 0.0001,
            "overlap": 0.91}


def test_the_bar_fits_the_terminal_it_is_drawn_on(monkeypatch, tmp_path):
    """A state wider than the terminal wraps, and \\r then redraws only its last row: every
    state fits COLUMNS (which mpirt launch sets for ranks on a terminal), down to a narrow one."""
    monkeypatch.setenv("MPIRT_PROGRESS", "bar")
    for columns in (200, 80, 40):
        monkeypatch.setenv("COLUMNS", str(columns))
        out = io.StringIO()
        m = Metrics(tmp_path / f"m{columns}.jsonl", total_steps=50, enabled=True, stream=out)
        for step in range(1, 51):
            m.log(record(step))
        m.close()
        states = out.getvalue().split("\r")[1:]
        assert len(states) == 50 and all(len(s.rstrip("\n")) < columns for s in states), (columns, states[:2])
        assert states[-1].startswith("[" + "#" * (len(states[-1].split("]")[0]) - 1) + "]")  # the last one full
        assert states[-1].endswith("\n") and not any(s.endswith("\n") for s in states[:-1])
        assert "step     50/50" in states[-1]  # what matters most comes first, kept at any width
        assert ("overlapped" in states[-1]) == (columns == 200)
        assert [json.loads(line)["step"] for line in (tmp_path / f"m{columns}.jsonl").read_text().splitlines()] == \
            list(range(1, 51))
