"""The learning-rate schedule's values, computed by hand: linear warmup, cosine decay, a floor."""

import pytest

from gptkit.optim import get_lr
from gptkit.train_settings import TrainConfig

# learning_rate 1e-3, min_lr 1e-4, warmup_iters 9, lr_decay_iters 109: warmup over iterations
# 0..8 as (it + 1) / 10 of the peak; the cosine from the peak at 9 to the floor at 109.
TABLE = [
    (0, 1e-4),  # warmup's start: 1/10 of the peak
    (4, 5e-4),  # halfway up
    (8, 9e-4),  # the last warmup step
    (9, 1e-3),  # the peak
    (34, 1e-4 + 9e-4 * 0.5 * (1 + 0.7071067811865476)),  # a quarter of the way down: cos(pi/4)
    (59, 5.5e-4),  # the cosine's midpoint: halfway between peak and floor
    (109, 1e-4),  # the end of the decay
    (500, 1e-4),  # after it: the floor
]


@pytest.mark.parametrize("it, lr", TABLE)
def test_schedule_values(it, lr):
    config = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=9, lr_decay_iters=109)
    assert get_lr(config, it) == pytest.approx(lr, rel=1e-12)


def test_no_decay_is_the_peak_throughout():
    config = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=9, lr_decay_iters=109, decay_lr=False)
    assert [get_lr(config, it) for it in (0, 9, 59, 500)] == [1e-3] * 4
