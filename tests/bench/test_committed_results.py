"""Every result file committed under benchmarks/results is a valid mpirt.bench document: the
schema check that `mpirt bench compare` and `report` rely on, run on what users will read."""

from pathlib import Path

import pytest

from mpirt.bench import schema

RESULTS = sorted((Path(__file__).parents[2] / "benchmarks" / "results").rglob("*.json"))


def test_there_are_committed_results():
    assert len(RESULTS) >= 5


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_committed_result_is_valid(path):
    doc = schema.load(path)
    assert doc["rows"] and doc["env"]["mpirt"]["git_commit"]
