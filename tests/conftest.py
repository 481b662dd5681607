"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import MODELS, make


@pytest.fixture(params=sorted(MODELS))
def model_and_input(request) -> tuple[nn.Module, torch.Tensor]:
    return make(request.param)
