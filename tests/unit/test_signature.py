"""The model-mismatch message: the first differing entry and every rank that differs there."""

import pytest
from torch import nn

from mpirt.signature import describe_mismatch, signature

CFG = {"bucket_mb": 25.0, "compression": "none"}


def sig(model, cfg=CFG):
    return signature(list(model.named_parameters()), list(model.named_buffers()), cfg)


def net(hidden=16, bn=False):
    layers = [nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2)]
    return nn.Sequential(*layers, *([nn.BatchNorm1d(2)] if bn else []))


def test_identical_models_have_identical_signatures():
    assert sig(net()) == sig(net())


def test_shape_difference_names_parameter_and_all_differing_ranks():
    text = describe_mismatch([sig(net()), sig(net()), sig(net(20)), sig(net(20))])
    assert "parameter '0.weight' is float32[16, 4] (cpu) on rank 0 but float32[20, 4] (cpu) on ranks 2, 3" in text


def test_dtype_difference():
    text = describe_mismatch([sig(net()), sig(net().double())])
    assert "float32[16, 4] (cpu) on rank 0 but float64[16, 4] (cpu) on rank 1" in text


def test_options_differ():
    text = describe_mismatch([sig(net()), sig(net(), {**CFG, "compression": "fp16"})])
    assert "data_parallel options differ" in text and "'fp16'" in text


def test_extra_entries_and_the_earliest_difference_wins():
    text = describe_mismatch([sig(net()), sig(net(bn=True)), sig(net(20))])
    assert "on rank 2" in text and "rank 1" not in text.split(".")[0]
    text = describe_mismatch([sig(net()), sig(net(bn=True))])
    assert "rank 1 has extra parameter '3.weight'" in text


@pytest.mark.parametrize("order", [0, 1])
def test_renamed_parameter(order):
    a, b = net(), nn.Sequential()
    b.add_module("first", nn.Linear(4, 16))
    b.add_module("act", nn.ReLU())
    b.add_module("last", nn.Linear(16, 2))
    text = describe_mismatch([sig(a), sig(b)] if order == 0 else [sig(a), sig(a), sig(b)])
    assert "rank 0 has parameter '0.weight' where rank" in text and "parameter 'first.weight'" in text
