"""Masks survive save and load: a loaded checkpoint fine-tunes with every pruned weight at zero.
And a Hugging Face folder written by pk.save is never loaded wrongly by plain transformers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import prunekit as pk
from prunekit.errors import CheckpointError
from prunekit.formats import header as hdr
from tests.ckpt_models import Net, ids, trained


def pruned(**kw) -> Net:
    net = trained()
    pk.prune(net, **kw)
    return net


def adamw_steps(model: nn.Module, steps: int = 5) -> None:
    """A few real training steps with a large learning rate: every weight would move."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        loss = model(ids(step)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() == 0 for n, p in model.named_parameters() if p.dim() > 1}


@pytest.mark.parametrize("kw", [{"sparsity": 0.9}, {"granularity": "2:4"}], ids=["90%", "2:4"])
def test_fine_tuning_a_loaded_checkpoint_keeps_every_pruned_weight_zero(tmp_path, kw):
    net = pruned(**kw)
    pk.save(net, tmp_path)
    before = zeros(net)
    loaded = pk.load(tmp_path, model=Net())
    assert pk.MaskState(loaded).masks.keys() == pk.MaskState(net).masks.keys()
    adamw_steps(loaded)
    after = zeros(loaded)
    for name, was_zero in before.items():
        masked = name in pk.MaskState(net).masks
        if masked:  # the pruned weights stay exactly zero, so sparsity is unchanged
            assert torch.equal(after[name], was_zero), name
    w = loaded.fc1.weight.detach()
    assert float((w == 0).float().mean()) == float((net.fc1.weight == 0).float().mean())
    assert not torch.equal(w, net.fc1.weight)  # and the kept ones did train
    if kw.get("granularity") == "2:4":  # an independent check of every group of four
        groups = loaded.fc1.weight.detach().reshape(-1, 4)
        assert int((groups != 0).sum(1).max()) <= 2
        rows = {r.name: r for r in pk.report(loaded).layers}
        assert rows["fc1.weight"].granularity == "2:4" and rows["fc1.weight"].nm_valid


def test_masks_false_loads_the_weights_only(tmp_path):
    net = pruned(sparsity=0.9)
    pk.save(net, tmp_path)
    loaded = pk.load(tmp_path, model=Net(), masks=False)
    assert not pk.MaskState(loaded).masks
    assert torch.equal(loaded.fc1.weight, net.fc1.weight)
    adamw_steps(loaded)
    assert float((loaded.fc1.weight == 0).float().mean()) < 0.5  # nothing holds the zeros now


def test_a_kept_weight_that_is_exactly_zero_stays_trainable(tmp_path):
    net = pruned(sparsity=0.5)
    mask = net.fc1.weight_pk_mask
    kept = mask.nonzero()[0]
    with torch.no_grad():
        net.fc1.weight[tuple(kept)] = 0.0  # kept, but zero: the mask is not "the non-zeros"
    pk.save(net, tmp_path)
    entry = hdr.read_header(tmp_path)["tensors"]["fc1.weight"]
    assert entry["mask"] == "bitmask"
    assert hdr.read_header(tmp_path)["tensors"]["fc2.weight"]["mask"] == "nonzero"
    loaded = pk.load(tmp_path, model=Net())
    assert torch.equal(loaded.fc1.weight_pk_mask, mask)
    adamw_steps(loaded)
    assert float(loaded.fc1.weight.detach()[tuple(kept)]) != 0.0
    assert torch.equal(loaded.fc1.weight != 0, mask)


def test_a_mask_that_keeps_a_zeroed_weight_out_is_refused(tmp_path):
    """A recorded bitmask must cover every non-zero weight (a genuine save zeroes the rest)."""
    net = pruned(sparsity=0.5)
    with torch.no_grad():
        net.fc1.weight[tuple(net.fc1.weight_pk_mask.nonzero()[0])] = 0.0
    pk.save(net, tmp_path)
    path = tmp_path / hdr.weights_file(hdr.read_header(tmp_path))
    parts = load_file(path)
    bits = parts["fc1.weight::keep_mask"]
    nonzero = (net.fc1.weight != 0).reshape(-1).nonzero()[0].item()  # a kept, non-zero weight
    bits[nonzero // 8] &= ~(1 << (7 - nonzero % 8)) & 0xFF  # drop it from the mask (MSB first)
    from safetensors.torch import save_file

    save_file(parts, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="outside the recorded mask"):
        pk.load(tmp_path, model=Net(), verify=False)


# ---- Hugging Face folders ----------------------------------------------------------------------


@pytest.fixture
def bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.BertModel(config).eval()
    pk.prune(model, 0.5)
    return model


def plain_transformers(directory):
    """What a user of plain transformers gets: the model, or the exception it raises."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(directory)
    except Exception as e:  # OSError for a folder without model.safetensors
        return e


def test_compressed_hf_save_is_refused_by_plain_transformers(tmp_path, bert):
    pk.save(bert, tmp_path)
    assert (tmp_path / "prunekit.safetensors").exists() and (tmp_path / "config.json").exists()
    assert not (tmp_path / "model.safetensors").exists()
    result = plain_transformers(tmp_path)
    assert isinstance(result, OSError), "plain transformers must not load a compressed folder"
    back = pk.load(tmp_path)
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(back(x).last_hidden_state, bert(x).last_hidden_state)


def test_dense_hf_export_loads_identical_weights_and_keeps_masks(tmp_path, bert):
    pk.save(bert, tmp_path, dense=True)
    result = plain_transformers(tmp_path)
    assert isinstance(result, nn.Module), result
    theirs, ours = result.state_dict(), bert.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    loaded = pk.load(tmp_path)  # the same folder through prunekit: masks come back
    assert pk.MaskState(loaded).masks.keys() == pk.MaskState(bert).masks.keys()
    adamw_steps_hf(loaded)
    w = loaded.encoder.layer[0].intermediate.dense.weight
    assert torch.equal(w == 0, bert.encoder.layer[0].intermediate.dense.weight == 0)


def adamw_steps_hf(model: nn.Module) -> None:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(3):
        x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(step))
        loss = model(x).last_hidden_state.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_compressed_save_over_a_dense_export_removes_the_stale_weights(tmp_path, bert):
    """Otherwise transformers would load the earlier export's weights with the new header."""
    pk.save(trained(), tmp_path / "x")  # unrelated
    pk.save(bert, tmp_path / "m", dense=True)
    assert isinstance(plain_transformers(tmp_path / "m"), nn.Module)
    with torch.no_grad():
        bert.pooler.dense.weight.mul_(2)
    pk.save(bert, tmp_path / "m")
    assert not (tmp_path / "m" / "model.safetensors").exists()
    assert isinstance(plain_transformers(tmp_path / "m"), OSError)
    assert torch.equal(pk.load(tmp_path / "m").pooler.dense.weight, bert.pooler.dense.weight)


def test_no_format_uses_the_mask_part_name():
    from prunekit.formats import FORMATS
    from prunekit.formats.maskrecord import MASK_PART

    assert all(MASK_PART not in FORMATS.get(n).part_names for n in FORMATS.names())
