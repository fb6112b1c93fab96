import itertools
import math

import pytest

from artstyle.training import cosine_lr, momentum_schedule, weight_decay_schedule


def test_cosine_lr_warmup_then_cosine_to_final():
    total, warmup, base, final = 100, 10, 1e-3, 1e-5
    assert cosine_lr(0, total, warmup, base, final) == pytest.approx(base / 10)
    assert cosine_lr(4, total, warmup, base, final) == pytest.approx(base * 5 / 10)
    assert cosine_lr(9, total, warmup, base, final) == pytest.approx(base)
    assert cosine_lr(10, total, warmup, base, final) == pytest.approx(base)
    # midpoint of the cosine part: (base + final) / 2
    assert cosine_lr(55, total, warmup, base, final) == pytest.approx((base + final) / 2)
    assert cosine_lr(total, total, warmup, base, final) == pytest.approx(final)
    assert cosine_lr(total + 5, total, warmup, base, final) == pytest.approx(final)
    values = [cosine_lr(s, total, warmup, base, final) for s in range(total + 1)]
    assert all(a < b for a, b in itertools.pairwise(values[:warmup]))
    assert all(a >= b for a, b in itertools.pairwise(values[warmup:]))


def test_cosine_lr_reference_value_and_no_warmup():
    # hand reference: step 25 of 100, no warmup -> final + (base-final) * (1 + cos(pi/4)) / 2
    expected = 0.1 + (1.0 - 0.1) * (1 + math.cos(math.pi / 4)) / 2
    assert cosine_lr(25, 100, 0, 1.0, 0.1) == pytest.approx(expected)
    assert cosine_lr(0, 100, 0, 1.0, 0.1) == 1.0
    assert cosine_lr(3, 5, 5, 2.0) == pytest.approx(2.0 * 4 / 5)  # warmup == total
    assert cosine_lr(5, 5, 5, 2.0) == 2.0


def test_momentum_rises_to_one():
    total = 50
    assert momentum_schedule(0, total, 0.99) == pytest.approx(0.99)
    assert momentum_schedule(25, total, 0.99) == pytest.approx(0.995)
    assert momentum_schedule(total, total, 0.99) == pytest.approx(1.0)
    values = [momentum_schedule(s, total, 0.99) for s in range(total + 1)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert momentum_schedule(10, 10, 0.9, final=0.95) == pytest.approx(0.95)


def test_weight_decay_schedule():
    assert weight_decay_schedule(0, 10, 0.04, 0.4) == pytest.approx(0.04)
    assert weight_decay_schedule(5, 10, 0.04, 0.4) == pytest.approx(0.22)
    assert weight_decay_schedule(10, 10, 0.04, 0.4) == pytest.approx(0.4)
    values = [weight_decay_schedule(s, 10, 0.04, 0.4) for s in range(11)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert weight_decay_schedule(7, 10, 0.05) == 0.05  # constant without final


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: cosine_lr(0, 0, 0, 1.0), "total"),
        (lambda: cosine_lr(-1, 10, 0, 1.0), "step"),
        (lambda: cosine_lr(0, 10, 11, 1.0), "warmup"),
        (lambda: momentum_schedule(0, 10, 1.5), "momentum"),
        (lambda: weight_decay_schedule(0, 10, -0.1), "weight decay"),
    ],
)
def test_schedule_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
