"""A training step compiled the way MLX's docs recommend: all state captured in and out."""

from __future__ import annotations

from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim


class MLP(nn.Module):
    def __init__(self, dims: int = 8, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(dims, hidden)
        self.dropout = nn.Dropout(0.2)
        self.out = nn.Linear(hidden, classes)

    def __call__(self, x: mx.array) -> mx.array:
        return self.out(self.dropout(nn.relu(self.hidden(x))))


def loss_fn(model: MLP, x: mx.array, y: mx.array) -> mx.array:
    return nn.losses.cross_entropy(model(x), y, reduction="mean")


def make_step(model: MLP, optimizer: optim.Optimizer) -> Any:
    # Dropout draws random numbers: mx.random.state must be captured in AND out.
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    return step
