"""The live slices of masks remembered between pk.prune and pk.shrink: valid only while the mask
stands as it was; a mask written since is read again."""

from __future__ import annotations

import torch
from torch import nn

import prunekit as pk
from prunekit.masks import get_mask, shrink_mask
from prunekit.structure.groups import know_live, live_slices


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 4, 3, padding=1),
    ).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _live_rows(model: nn.Module, i: int) -> torch.Tensor:
    """The output channels of layer ``i`` whose mask keeps some entry (read from the mask)."""
    mask = get_mask(model[i], "weight")
    return mask.flatten(1).any(1)


def test_live_slices_are_read_again_once_the_mask_is_written():
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[1] = False
    know_live(mask, {0: torch.tensor([True, False, True, True])})
    assert live_slices(mask, 0).tolist() == [True, False, True, True]
    assert live_slices(mask, 1).tolist() == [True, True, True]
    mask[2] = False  # in place: its version moves
    assert live_slices(mask, 0).tolist() == [True, False, False, True]
    mask[:, 0] = False
    assert live_slices(mask, 1).tolist() == [False, True, True]
    empty = torch.zeros(2, 3, dtype=torch.bool)
    know_live(empty, {0: torch.tensor([False, False])})  # no row kept: no column either
    assert not live_slices(empty, 1).any()


def test_shrink_removes_a_channel_masked_after_prune():
    model, x = _model(), _x()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    live = _live_rows(model, 0)
    extra = int(torch.nonzero(live)[0])
    for module, attr, dim in (
        (model[0], "weight", 0),
        (model[0], "bias", 0),
        (model[2], "weight", 1),
    ):
        keep = torch.ones_like(getattr(module, attr), dtype=torch.bool)
        keep.select(dim, extra).fill_(False)
        shrink_mask(module, attr, keep)  # the user prunes one more channel, all its slices
    small = pk.shrink(model, x)
    assert small[0].out_channels == int(live.sum()) - 1 == int(_live_rows(model, 0).sum())
    assert small[2].in_channels == small[0].out_channels


def test_shrink_keeps_a_channel_whose_mask_was_set_again_in_place():
    model, x = _model(), _x()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    dead = int(torch.nonzero(~_live_rows(model, 0))[0])
    with torch.no_grad():
        get_mask(model[0], "weight")[dead] = True  # written in place after prune
    small = pk.shrink(model, x)
    assert small[0].out_channels == int(_live_rows(model, 0).sum()) == 9
    assert small[2].in_channels == 9
