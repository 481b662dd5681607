"""Small models shared by the storage tests (importable from a fresh process, too)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn


class Net(nn.Module):
    """A little of everything: linear, conv, norms, a tied embedding and an integer buffer."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 32)
        self.fc1 = nn.Linear(32, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.conv = nn.Conv1d(hidden, 32, 3, padding=1)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(32, 16, bias=False)
        self.head.weight = self.embed.weight  # tied, as in language models

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [batch, seq]
        x = self.norm(torch.relu(self.fc1(self.embed(ids))))  # [batch, seq, hidden]
        x = self.bn(self.conv(x.transpose(1, 2))).transpose(1, 2)  # [batch, seq, 32]
        return self.fc2(x) + self.head(x)


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...] = (24, 48, 32, 10)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.norm = nn.LayerNorm(sizes[-2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if i == len(self.layers) - 1:
                x = self.norm(x)
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(seed))


def trained(seed: int = 0) -> Net:
    """A Net with non-trivial norm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = Net()
    net.train()
    with torch.no_grad():
        net(ids(seed + 1))
    return net.eval()
