"""Reformer's local and LSH self-attention lose heads (:mod:`prunekit.structure.reformer`).

LSH attention hashes each head with random rotations drawn in forward for the layer's head
count. The shrunk model must hash every kept head with the rotations its original index drew,
and draw as many random numbers as the original (without ``hash_seed`` a later LSH layer's
rotations follow the earlier layer's draws). So the shrunk model is checked against the ORIGINAL
model whose dropped heads are silenced by zeroing their output-projection columns (no prunekit
code runs on it) under the same seed, its LSH hashing against the original layer's own, and a
checkpoint reloaded in a fresh process from the checkpoint alone. The kept heads are 0 and 3, not
a prefix: a plain LSH layer with two heads would draw head 0's rotations again (a prefix of the
same random stream) but not head 3's.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.structure.graph import call_model

from .test_heads_families import _reload_in_fresh_process

transformers = pytest.importorskip("transformers")
KEPT = [0, 3]  # heads 1 and 2 of every layer are made the smallest
DROPPED = [1, 2]


def _reformer(hash_seed: int | None) -> torch.nn.Module:
    """Local, LSH, LSH layers with two hash rounds; heads 1 and 2 of every layer scaled down so
    that magnitude pruning removes them."""
    torch.manual_seed(0)
    cfg = transformers.ReformerConfig(
        vocab_size=64, hidden_size=32, num_attention_heads=4, attention_head_size=8,
        attn_layers=["local", "lsh", "lsh"], axial_pos_shape=(4, 4),
        axial_pos_embds_dim=(16, 16), max_position_embeddings=16, feed_forward_size=64,
        local_attn_chunk_length=4, lsh_attn_chunk_length=8, num_buckets=4, num_hashes=2,
        hash_seed=hash_seed, is_decoder=True, initializer_range=0.2,
    )  # fmt: skip
    model = transformers.ReformerModelWithLMHead(cfg).eval()
    with torch.no_grad():
        for attn in _attentions(model):
            for p in ("query", "key", "query_key", "value"):
                if hasattr(attn.self_attention, p):
                    getattr(attn.self_attention, p).weight.view(4, 8, -1)[DROPPED] *= 0.5
            attn.output.dense.weight.view(-1, 4, 8)[:, DROPPED] *= 0.5
    return model


def _inputs() -> dict:
    return {"input_ids": torch.randint(3, 64, (2, 16), generator=torch.Generator().manual_seed(2))}


def _attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [layer.attention for layer in model.reformer.encoder.layers]


def _silenced(original: torch.nn.Module) -> torch.nn.Module:
    """The original with the dropped heads' output columns zeroed."""
    silenced = copy.deepcopy(original)
    with torch.no_grad():
        for attn in _attentions(silenced):
            attn.output.dense.weight.view(-1, 4, 8)[:, DROPPED] = 0
    return silenced


def _shrunk(hash_seed: int | None) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(original, masked, shrunk)."""
    model, x = _reformer(hash_seed), _inputs()
    original = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pk.prune(model, 0.5, granularity="head", example_inputs=x)
    assert not [str(w.message) for w in caught if "heads of" in str(w.message)]
    return original, model, pk.shrink(model, x)


def _logits(model: torch.nn.Module, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return call_model(model, x).logits  # seeded: every model draws the same numbers


def _hash(attn: torch.nn.Module, vectors: torch.Tensor, mask: torch.Tensor) -> tuple:
    """The LSH layer's buckets of ``vectors`` (two rounds) from seed 7, and the generator's
    next draw after them."""
    torch.manual_seed(7)
    return attn.self_attention._hash_vectors(vectors, 2, mask), torch.randn(4)


@pytest.mark.parametrize("hash_seed", [None, 5])
def test_shrunk_reformer_hashes_kept_heads_with_their_original_rotations(hash_seed):
    original, masked, small = _shrunk(hash_seed)
    x = _inputs()
    for attn in _attentions(small):
        own = attn.self_attention
        assert own.num_attention_heads == 2 and own.all_head_size == 16
        assert own.value.weight.shape == (16, 32) and attn.output.dense.weight.shape == (32, 16)
        lsh = hasattr(own, "query_key")
        assert getattr(own, "rotation_heads", None) == (KEPT if lsh else None)
    assert small.config.num_attention_heads == 4  # LSH draws rotations for the original count
    expected = _logits(_silenced(original), x)
    got = _logits(small, x)
    torch.testing.assert_close(got, _logits(masked, x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, _logits(original, x), atol=1e-4)  # heads really went
    # the same LSH layer drawing rotations for its two heads hashes head 3 otherwise
    plain = copy.deepcopy(small)
    lsh = transformers.models.reformer.modeling_reformer.LSHSelfAttention
    for attn in _attentions(plain)[1:]:
        attn.self_attention.__class__ = lsh
    assert not torch.allclose(_logits(plain, x), expected, atol=1e-4)
    # each LSH layer against the original layer's own hashing of the same vectors: the kept
    # heads' buckets, and the generator left where the original leaves it
    vectors = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0  # padding takes a bucket of its own
    for layer in (1, 2):
        full, after = _hash(_attentions(original)[layer], vectors, mask)
        kept, after_kept = _hash(_attentions(small)[layer], vectors[:, KEPT], mask)
        assert torch.equal(kept, full[:, KEPT])
        assert torch.equal(after_kept, after)
    # generation: past the first 8 tokens the cache hashes one query at a time
    kw = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "num_beams": 1,
          "output_scores": True, "return_dict_in_generate": True}  # fmt: skip
    scores = []
    for m in (_silenced(original), small):
        torch.manual_seed(3)
        with torch.no_grad():
            scores.append(torch.stack(m.generate(x["input_ids"][:, :5], **kw).scores))
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-5, atol=1e-6)


def test_shrunk_reformer_reloads_identically_in_a_fresh_process(tmp_path, loader):
    """From the checkpoint alone (config + shape manifest): a layer that came back without its
    kept heads' rotations would hash head 3 otherwise (see the test above)."""
    _, _, small = _shrunk(None)
    _reload_in_fresh_process(loader, small, _inputs(), tmp_path)


def test_plain_transformers_refuses_the_shrunk_reformer(tmp_path):
    """Its config keeps four heads (the count LSH draws rotations for): ``from_pretrained``
    raises on the shapes rather than load a model that hashes otherwise, and a dense
    ``pk.save`` says so."""
    _, _, small = _shrunk(None)
    with pytest.warns(UserWarning, match="config.json cannot describe"):
        pk.save(small, tmp_path / "dense", dense=True)
    small.save_pretrained(tmp_path / "hf")
    with pytest.raises(Exception, match="mismatch"):
        transformers.ReformerModelWithLMHead.from_pretrained(tmp_path / "hf")


def test_shrink_checks_lsh_hashing_on_inputs_longer_than_a_chunk(monkeypatch):
    """On sequences up to its chunk length LSH attention skips hashing, so shrink's check on a
    cut of 1/8 of 160 tokens (20; chunk length 32) would never run the pruned layers' hashing:
    the cut keeps two of the model's longest chunks, and a pruned layer that hashed its kept
    heads with the wrong rotations is caught. (Channels pruned too: shrink then reuses
    pk.prune's groups and checks on the cut.)"""
    from prunekit.errors import VerificationError
    from prunekit.structure import reformer

    torch.manual_seed(0)
    cfg = transformers.ReformerConfig(
        vocab_size=64, hidden_size=32, num_attention_heads=4, attention_head_size=8,
        attn_layers=["lsh", "lsh"], axial_pos_shape=(16, 16), axial_pos_embds_dim=(16, 16),
        max_position_embeddings=256, feed_forward_size=64, lsh_attn_chunk_length=32,
        num_buckets=4, is_decoder=True,
    )  # fmt: skip
    model = transformers.ReformerModelWithLMHead(cfg).eval()
    x = {"input_ids": torch.randint(3, 64, (2, 160), generator=torch.Generator().manual_seed(2))}
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    pk.prune(model, 0.25, granularity="channel", example_inputs=x)
    right = reformer._Rotating._hash_vectors

    def wrong(self, vectors, *args, **kwargs):  # the kept heads' rotations swapped
        return right(self, vectors.flip(1), *args, **kwargs).flip(1)

    monkeypatch.setattr(reformer._Rotating, "_hash_vectors", wrong)
    with pytest.raises(VerificationError):
        pk.shrink(copy.deepcopy(model), x)
    monkeypatch.setattr(reformer._Rotating, "_hash_vectors", right)
    pk.shrink(model, x)
