"""Head pruning across Hugging Face families: build each from a tiny config (random weights),
prune 50% of its heads, shrink (verified against the masked model), save, then load in ONE fresh
process from the checkpoint alone (``pk.load(DIR)``: the saved config + shape manifest) and
compare outputs exactly; also try plain ``transformers`` ``from_pretrained`` on a
``save_pretrained`` folder. Prints one row per family.

Run from the repository root: ``PYTHONPATH=src python tests/structure/heads_sweep.py [names]``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import prunekit as pk  # noqa: E402
from prunekit.structure.graph import call_model, flatten  # noqa: E402
from tests.structure.zoo import ATTENTION, INPUTS, ZOO  # noqa: E402


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(2)


def ids(n: int = 8) -> Callable[[], dict]:
    return lambda: {"input_ids": torch.randint(3, 64, (2, n), generator=_gen())}


def seq2seq(n: int = 8) -> Callable[[], dict]:
    def make() -> dict:
        g = _gen()
        return {
            "input_ids": torch.randint(3, 64, (2, n), generator=g),
            "decoder_input_ids": torch.randint(3, 64, (2, 5), generator=g),
        }

    return make


def pixels(size: int = 32, channels: int = 3) -> Callable[[], Any]:
    return lambda: torch.randn(2, channels, size, size, generator=_gen())


def waveform(n: int = 400) -> Callable[[], Any]:
    return lambda: torch.randn(2, n, generator=_gen())


def features(**shapes: tuple[int, ...]) -> Callable[[], dict]:
    def make() -> dict:
        g = _gen()
        out = {}
        for k, s in shapes.items():
            if k.endswith("ids"):
                out[k] = torch.randint(3, 64, s, generator=g)
            else:
                out[k] = torch.randn(*s, generator=g)
        return out

    return make


TEXT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
LLAMA = {**TEXT, "num_key_value_heads": 2, "pad_token_id": 0, "bos_token_id": 0,
         "eos_token_id": 0}  # fmt: skip
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 64, "image_size": 32, "patch_size": 8}  # fmt: skip
SEQ2SEQ = {"vocab_size": 64, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
           "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
           "decoder_ffn_dim": 64, "max_position_embeddings": 64, "pad_token_id": 1,
           "decoder_start_token_id": 2}  # fmt: skip
AUDIO = {"vocab_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "conv_dim": (16, 16), "conv_stride": (5, 2),
         "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
         "num_conv_pos_embedding_groups": 4}  # fmt: skip

SEQ2SEQ_SMALL = {k: v for k, v in SEQ2SEQ.items() if k != "max_position_embeddings"}
T5 = {"vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
      "relative_attention_num_buckets": 8, "decoder_start_token_id": 0}  # fmt: skip
PYRAMID = {"num_encoder_blocks": 2, "depths": [1, 1], "hidden_sizes": [16, 32],
           "num_attention_heads": [2, 4], "mlp_ratios": [2, 2], "image_size": 32}  # fmt: skip

#: family -> (transformers class, config keywords, example inputs); zoo models join by name
FAMILIES: dict[str, tuple[str, dict, Callable[[], Any]]] = {
    # encoders
    "roberta": ("RobertaForMaskedLM", TEXT, ids()),
    "camembert": ("CamembertForMaskedLM", TEXT, ids()),
    "ernie": ("ErnieForMaskedLM", TEXT, ids()),
    "layoutlm": ("LayoutLMForMaskedLM", TEXT, ids()),
    "mobilebert": ("MobileBertForMaskedLM", {**TEXT, "embedding_size": 32,
                   "intra_bottleneck_size": 16, "num_feedforward_networks": 1}, ids()),
    # the default groups (q/k/v 4): 8 heads, two per block of the groups
    "squeezebert": ("SqueezeBertForMaskedLM", {**TEXT, "embedding_size": 32,
                    "num_attention_heads": 8}, ids()),
    "squeezebert_1g": ("SqueezeBertForMaskedLM", {**TEXT, "embedding_size": 32, "q_groups": 1,
                       "k_groups": 1, "v_groups": 1}, ids()),
    "longformer": ("LongformerForMaskedLM", {**TEXT, "attention_window": 4}, ids()),
    "big_bird": ("BigBirdForMaskedLM", {**TEXT, "attention_type": "original_full"}, ids()),
    "rembert": ("RemBertForMaskedLM", {**TEXT, "input_embedding_size": 16,
                "output_embedding_size": 16}, ids()),
    "reformer": ("ReformerModelWithLMHead", {"vocab_size": 64, "hidden_size": 32,
                 "num_attention_heads": 4, "attention_head_size": 8,
                 "attn_layers": ["local", "lsh"],
                 "axial_pos_shape": (4, 4), "axial_pos_embds_dim": (16, 16),
                 "max_position_embeddings": 16, "feed_forward_size": 64,
                 "local_attn_chunk_length": 4, "lsh_attn_chunk_length": 4, "num_buckets": 2,
                 "is_decoder": True}, ids(16)),
    "nystromformer": ("NystromformerForMaskedLM", {**TEXT, "num_landmarks": 4,
                      "segment_means_seq_len": 8}, ids()),
    "modernbert": ("ModernBertForMaskedLM", {**TEXT, "global_attn_every_n_layers": 2,
                   "local_attention": 4, "pad_token_id": 0, "bos_token_id": 1,
                   "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2}, ids()),
    "deberta": ("DebertaForMaskedLM", {**TEXT, "relative_attention": True,
                "pos_att_type": ["p2c", "c2p"], "max_relative_positions": 8}, ids()),
    "convbert": ("ConvBertForMaskedLM", {**TEXT, "num_attention_heads": 8,
                 "embedding_size": 32, "head_ratio": 2, "conv_kernel_size": 3}, ids()),
    "xlnet": ("XLNetLMHeadModel", {"vocab_size": 64, "d_model": 32, "n_layer": 2, "n_head": 4,
              "d_inner": 64}, ids()),
    "funnel": ("FunnelForMaskedLM", {"vocab_size": 64, "block_sizes": [1, 1], "d_model": 32,
               "n_head": 4, "d_head": 8, "d_inner": 64}, ids()),
    "data2vec_text": ("Data2VecTextForMaskedLM", TEXT, ids()),
    "siglip_text": ("SiglipTextModel", TEXT, ids()),
    "perceiver": ("PerceiverForMaskedLM", {"vocab_size": 64, "d_model": 32, "d_latents": 32,
                  "num_latents": 8, "num_blocks": 1, "num_self_attends_per_block": 1,
                  "num_self_attention_heads": 4, "num_cross_attention_heads": 2,
                  "max_position_embeddings": 64}, ids()),
    # decoders
    "phi": ("PhiForCausalLM", {**TEXT, "partial_rotary_factor": 0.5}, ids()),
    "gemma2": ("Gemma2ForCausalLM", {**LLAMA, "head_dim": 8}, ids()),
    "gemma3": ("Gemma3ForCausalLM", {**LLAMA, "head_dim": 8, "sliding_window": 4}, ids()),
    "mpt": ("MptForCausalLM", {"vocab_size": 64, "d_model": 32, "n_heads": 4, "n_layers": 2,
            "expansion_ratio": 2, "max_seq_len": 64}, ids()),
    "olmo": ("OlmoForCausalLM", LLAMA, ids()),
    "cohere": ("CohereForCausalLM", LLAMA, ids()),
    "starcoder2": ("Starcoder2ForCausalLM", LLAMA, ids()),
    "granite": ("GraniteForCausalLM", LLAMA, ids()),
    "persimmon": ("PersimmonForCausalLM", TEXT, ids()),
    "biogpt": ("BioGptForCausalLM", TEXT, ids()),
    "xglm": ("XGLMForCausalLM", {"vocab_size": 64, "d_model": 32, "num_layers": 2,
             "attention_heads": 4, "ffn_dim": 64, "max_position_embeddings": 64}, ids()),
    "openai_gpt": ("OpenAIGPTLMHeadModel", {"vocab_size": 64, "n_embd": 32, "n_layer": 2,
                   "n_head": 4, "n_positions": 64}, ids()),
    "ctrl": ("CTRLLMHeadModel", {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
             "dff": 64, "n_positions": 64}, ids()),
    "qwen2_moe": ("Qwen2MoeForCausalLM", {**LLAMA, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64}, ids()),
    # encoder-decoder
    "mbart": ("MBartForConditionalGeneration", SEQ2SEQ, seq2seq()),
    "pegasus": ("PegasusForConditionalGeneration", SEQ2SEQ, seq2seq()),
    "marian": ("MarianMTModel", SEQ2SEQ, seq2seq()),
    "m2m100": ("M2M100ForConditionalGeneration", SEQ2SEQ, seq2seq()),
    "blenderbot": ("BlenderbotForConditionalGeneration", SEQ2SEQ, seq2seq()),
    "blenderbot_small": ("BlenderbotSmallForConditionalGeneration", SEQ2SEQ, seq2seq()),
    "plbart": ("PLBartForConditionalGeneration", SEQ2SEQ, seq2seq()),
    "led": ("LEDForConditionalGeneration", {**SEQ2SEQ_SMALL, "attention_window": 4,
            "max_encoder_position_embeddings": 64, "max_decoder_position_embeddings": 64},
            seq2seq()),
    "bigbird_pegasus": ("BigBirdPegasusForConditionalGeneration", {**SEQ2SEQ,
                        "attention_type": "original_full"}, seq2seq()),
    "prophetnet": ("ProphetNetForConditionalGeneration", {"vocab_size": 64, "hidden_size": 32,
                   "encoder_ffn_dim": 64, "num_encoder_layers": 2, "num_encoder_attention_heads": 4,
                   "decoder_ffn_dim": 64, "num_decoder_layers": 2, "num_decoder_attention_heads": 4,
                   "max_position_embeddings": 64, "num_buckets": 8, "relative_max_distance": 16},
                   seq2seq()),
    "mt5": ("MT5ForConditionalGeneration", T5, seq2seq()),
    "umt5": ("UMT5ForConditionalGeneration", T5, seq2seq()),
    "longt5": ("LongT5ForConditionalGeneration", {**T5, "local_radius": 2}, seq2seq()),
    "speech2text": ("Speech2TextForConditionalGeneration", {**SEQ2SEQ_SMALL,
                    "max_source_positions": 64, "max_target_positions": 64, "conv_channels": 16,
                    "input_feat_per_channel": 8}, features(input_features=(2, 16, 8),
                    decoder_input_ids=(2, 5))),
    # vision
    "vit_msn": ("ViTMSNModel", VISION, pixels()),
    "vit_mae": ("ViTMAEModel", VISION, pixels()),
    "data2vec_vision": ("Data2VecVisionModel", {**VISION, "use_relative_position_bias": True},
                        pixels()),
    "yolos": ("YolosModel", {**VISION, "num_detection_tokens": 4, "image_size": [32, 32]},
              pixels()),
    "segformer": ("SegformerModel", {**PYRAMID, "sr_ratios": [2, 1], "patch_sizes": [7, 3],
                  "strides": [4, 2], "decoder_hidden_size": 32}, pixels()),
    "pvt": ("PvtModel", {**PYRAMID, "sequence_reduction_ratios": [2, 1], "patch_sizes": [4, 2],
            "strides": [4, 2]}, pixels()),
    "pvt_v2": ("PvtV2Model", {**PYRAMID, "sr_ratios": [2, 1], "patch_sizes": [7, 3],
               "strides": [4, 2]}, pixels()),
    "mobilevit": ("MobileViTModel", {"image_size": 32, "hidden_sizes": [16, 16, 16],
                  "neck_hidden_sizes": [8, 8, 8, 8, 8, 8, 16], "num_attention_heads": 4},
                  pixels()),
    "levit": ("LevitModel", {"image_size": 32, "hidden_sizes": [32, 48], "num_attention_heads":
              [2, 3], "depths": [1, 1], "key_dim": [8, 8], "mlp_ratio": [2, 2],
              "attention_ratio": [2, 2], "patch_size": 16,
              "down_ops": [["Subsample", 8, 4, 4, 2, 2]]}, pixels()),
    "cvt": ("CvtModel", {"embed_dim": [16, 32], "num_heads": [2, 4], "depth": [1, 2],
            "patch_sizes": [7, 3], "patch_stride": [4, 2], "patch_padding": [2, 1],
            "mlp_ratio": [2.0, 2.0], "attention_drop_rate": [0.0, 0.0], "drop_rate": [0.0, 0.0],
            "drop_path_rate": [0.0, 0.0], "qkv_bias": [True, True], "cls_token": [False, True],
            "qkv_projection_method": ["dw_bn", "dw_bn"], "kernel_qkv": [3, 3],
            "padding_kv": [1, 1], "stride_kv": [2, 2], "padding_q": [1, 1], "stride_q": [1, 1]},
            pixels()),
    "siglip_vision": ("SiglipVisionModel", VISION, pixels()),
    "clip": ("CLIPModel", {"text_config": {**TEXT, "bos_token_id": 0, "eos_token_id": 1,
             "pad_token_id": 1}, "vision_config": VISION, "projection_dim": 8},
             features(input_ids=(2, 8), pixel_values=(2, 3, 32, 32))),
    "siglip": ("SiglipModel", {"text_config": TEXT, "vision_config": VISION},
               features(input_ids=(2, 8), pixel_values=(2, 3, 32, 32))),
    "dinov2_registers": ("Dinov2WithRegistersModel", {**VISION, "mlp_ratio": 2,
                         "num_register_tokens": 2}, pixels()),
    # audio
    "hubert": ("HubertModel", AUDIO, waveform()),
    "data2vec_audio": ("Data2VecAudioModel", AUDIO, waveform()),
    "sew": ("SEWModel", {**AUDIO, "squeeze_factor": 2}, waveform()),
    "sew_d": ("SEWDModel", {**AUDIO, "squeeze_factor": 2, "position_buckets": 8,
              "max_position_embeddings": 64}, waveform()),
    "unispeech": ("UniSpeechModel", AUDIO, waveform()),
    "unispeech_sat": ("UniSpeechSatModel", AUDIO, waveform()),
    "wavlm": ("WavLMModel", {**AUDIO, "num_buckets": 8, "max_bucket_distance": 16}, waveform()),
    "wav2vec2_conformer": ("Wav2Vec2ConformerModel", {**AUDIO, "conv_depthwise_kernel_size": 3,
                           "position_embeddings_type": "relative"}, waveform()),
    "ast": ("ASTModel", {**VISION, "num_mel_bins": 16, "max_length": 32, "patch_size": 8,
            "frequency_stride": 8, "time_stride": 8}, features(input_values=(2, 32, 16))),
}  # fmt: skip


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in flatten(out) if isinstance(t, torch.Tensor)]


def inputs(name: str) -> Any:
    return FAMILIES[name][2]() if name in FAMILIES else INPUTS[name]()


def build(name: str) -> tuple[torch.nn.Module, Any]:
    """The family's model (random weights, seed 0) and example inputs; zoo names too."""
    import transformers

    if name not in FAMILIES:
        return ZOO[name]().eval(), INPUTS[name]()
    cls_name, cfg, inputs = FAMILIES[name]
    cls = getattr(transformers, cls_name)
    torch.manual_seed(0)
    return cls(cls.config_class(**cfg)).eval(), inputs()


def prune_heads(name: str, base: Path) -> dict[str, Any]:
    """One family's row (without the fresh-process reload, filled in later)."""
    import transformers

    row: dict[str, Any] = {"name": name}
    try:
        model, x = build(name)
    except Exception as e:  # a config this transformers version refuses
        row["result"] = f"not built: {type(e).__name__}: {str(e)[:80]}"
        return row
    before = _params(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pk.prune(model, 0.5, granularity="head", example_inputs=x)
            small = pk.shrink(model, x)
        except pk.PrunekitError as e:
            row["result"] = f"refused: {type(e).__name__}: {e}"
            return row
    stays = [str(w.message) for w in caught if "heads of" in str(w.message)]
    row["params"] = _params(small) / before
    row["stays"] = stays
    with torch.no_grad():
        row["expected"] = _tensors(call_model(small.eval(), x))
    pk.save(small, base / name)
    try:
        small.save_pretrained(base / f"{name}-hf")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = getattr(transformers, type(small).__name__).from_pretrained(base / f"{name}-hf")
        with torch.no_grad():
            got = _tensors(call_model(plain.eval(), x))
        same = all(torch.equal(a, b) for a, b in zip(row["expected"], got, strict=True))
        row["plain"] = "same outputs" if same else "DIFFERENT outputs"
    except Exception as e:  # transformers refuses the shrunk shapes
        row["plain"] = "refuses (shapes)" if "mismatch" in str(e) else f"{type(e).__name__}"
    return row


_RELOAD = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import prunekit as pk
from tests.structure.heads_sweep import inputs, _tensors
from prunekit.structure.graph import call_model
for name in {names!r}:
    try:
        model = pk.load({base!r} + "/" + name)  # the checkpoint alone: config + shape manifest
        with torch.no_grad():
            out = _tensors(call_model(model.eval(), inputs(name)))
    except Exception as e:
        out = f"{{type(e).__name__}}: {{e}}"
    torch.save(out, {base!r} + f"/{{name}}.pt")
"""


def sweep(names: list[str]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rows = [prune_heads(n, base) for n in names]
        saved = [r["name"] for r in rows if "params" in r]
        code = _RELOAD.format(root=str(ROOT), base=str(base), names=saved)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        for r in rows:
            if "params" not in r:
                continue
            got = torch.load(base / f"{r['name']}.pt", weights_only=True)
            if isinstance(got, str):
                r["result"] = f"reload fails: {got[:200]}"
                continue
            same = len(got) == len(r["expected"]) and all(
                torch.equal(a, b) for a, b in zip(r["expected"], got, strict=True)
            )
            r["result"] = (
                "works"
                if same and not r["stays"]
                else ("reload DIFFERS" if not same else "works, some heads stay")
            )
    return rows


if __name__ == "__main__":
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    zoo = [n for n in ZOO if n in ATTENTION and n not in FAMILIES and n != "mha"]
    rows = sweep(sys.argv[1:] or list(FAMILIES) + zoo)
    print(f"{'family':14s} {'params':>6s}  {'result':24s} plain transformers")
    for r in rows:
        p = f"{r['params']:.3f}" if "params" in r else "-"
        print(f"{r['name']:14s} {p:>6s}  {r['result']:24s} {r.get('plain', '')}")
        for s in r.get("stays", []):
            print(f"{'':14s} {s}")
