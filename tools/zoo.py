"""Model zoo: real architectures with random weights, built on the fly, quantized the way a new user would.

For every model: export to ONNX (opset 17, batch 1 fixed, as ``torch.onnx.export`` writes by default), then

- ``import``: ``onnxptq.inspect`` reads it;
- ``W8A8 QDQ``: ``onnxptq.quantize`` (RTN, float scales) and onnxruntime ``quantize_static`` (MinMax,
  QUInt8 activations / QInt8 per-channel weights, after ``quant_pre_process``) on the same calibration
  data; both SQNR dB of the quantized model in onnxruntime against the float model on the same evaluation data.
  On x86 without VNNI both use 7-bit weights (onnxptq ``--target onnxruntime-avx2``, quantize_static
  ``reduce_range``), as onnxruntime's docs ask there: otherwise its uint8 x int8 kernels saturate and the
  figures measure that (``onnxptq eval`` and ``verify`` say so when it happens);
- ``po2 int``: ``--format int --scale po2`` export for the onnxruntime target that is exact on this CPU
  (``targets.exact_onnxruntime_target``: 7-bit weights on x86 without VNNI), then level-1 ``verify`` (runtime/ vs
  onnxruntime vs the integer simulation) on a few evaluation samples;
- ``int kernels``: layers of the W8A8 QDQ model that onnxruntime runs on integer kernels.

Nothing downloads: timm, ultralytics and transformers build the architectures from code/yaml with random
weights (seeded). Image models are fed real-photo crops (scikit-image / scikit-learn sample photos);
BERT random token ids with a padding mask.

    python tools/zoo.py                        # every model, table on stdout
    python tools/zoo.py --only resnet18,yolov8n
    python tools/zoo.py --out docs/benchmarks.md   # regenerate the zoo section
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench import (ArrayReader, BenchError, cache_dir, command_line, machine_info, parse_sets,  # noqa: E402
                         machine_line, ort_preprocess, write_section)

NUM_CALIB, NUM_EVAL, NUM_VERIFY = 32, 32, 2
# W8A8 SQNR of both quantizers is averaged over independent calibration draws: with 32 samples one draw moves it
# by several dB on ill-conditioned random-weight models (mixnet_s, quantize_static: 11.15 / 14.28 / 15.83 dB
# at calibration seeds 1 / 3 / 4), so a single draw cannot say which quantizer is better.
NUM_DRAWS = 3
EVAL_SEED = 2


def calib_seed(draw: int) -> int:
    """The calibration seed of draw ``draw`` (0-based): 1, 3, 4, ... (never the evaluation seed)."""
    return 1 if draw == 0 else draw + EVAL_SEED


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str  # timm | ultralytics | transformers
    build: Callable[[], tuple]  # -> (torch module, example inputs tuple, input names, output names)
    fast: bool = False  # in the test suite's subset


def _timm(name: str, size: int = 224, random_zero_weights: bool = False, **kw) -> Callable[[], tuple]:
    """A timm model with its random initial weights; ``random_zero_weights``: weight matrices timm initializes to
    zero (Sequencer's classifier) get small random values instead, or the output would be zero for every input
    and no SQNR could be measured."""
    def build():
        import timm
        import torch

        torch.manual_seed(0)
        m = timm.create_model(name, pretrained=False, **kw).eval()
        if random_zero_weights:
            with torch.no_grad():
                for p in m.parameters():
                    if p.dim() > 1 and not p.any():
                        torch.nn.init.normal_(p, std=0.02)
        return m, (torch.randn(1, 3, size, size),), ["input"], ["output"]
    return build


def _yolo(yaml: str, size: int = 320, task: str = "DetectionModel") -> Callable[[], tuple]:
    def build():
        import torch
        from ultralytics.nn import tasks
        from ultralytics.nn.modules import Detect

        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            m = getattr(tasks, task)(yaml, verbose=False).eval()
        for mod in m.modules():  # what ultralytics' own ONNX export sets: one (1, 84, anchors) output
            if isinstance(mod, Detect):
                mod.export, mod.format, mod.dynamic = True, "onnx", False
        return m, (torch.randn(1, 3, size, size),), ["images"], ["output0"]
    return build


def _logits(inner, arg_names: list[str], output: str = "logits"):
    """``inner`` (a transformers model) as a module taking its inputs positionally and returning its ``output``
    (the logits, or e.g. an encoder's last hidden state)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return getattr(self.inner(**dict(zip(arg_names, args))), output)

    return Logits().eval()


def _additive_mask(inner, fill: float, output: str = "logits"):
    """``inner`` (a transformers model) taking token ids and a 0 / 1 attention mask (N, T) that enters as the
    additive (1 - mask) * ``fill`` of older exports (BERT's -10000.0 before transformers 4.x, and many ONNX files
    in the wild), which the model adds to its attention scores as it is; returns its ``output``."""
    import torch

    class AdditiveMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            additive = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * fill
            return getattr(self.inner(input_ids=input_ids, attention_mask=additive), output)

    return AdditiveMask().eval()


def _hf_text(kind: str, seq: int = 32, mask_fill: float | None = None, init: float = 0.02) -> Callable[[], tuple]:
    """A tiny transformers text model (random weights, eager attention): bert | distilbert | gpt2 | albert | deberta |
    roberta | llama | qwen2 | phi3 | mobilebert | electra | funnel (their logits) | t5-encoder (its last hidden
    state) | clip-text (CLIP's text embedding: the end token, found by ArgMax over the ids, projected);
    inputs: token ids and an attention mask, which ``mask_fill`` turns into an additive mask of that fill
    (``_additive_mask``). ``init``: BERT's ``initializer_range`` (0.02 by default; at 0.1 its random attention is
    peaked, as a trained model's is, instead of nearly uniform, so that how a quantizer keeps the attention scores
    shows in the output)."""
    def build():
        import torch
        import transformers as tf

        torch.manual_seed(0)
        small = dict(vocab_size=1000, num_attention_heads=2, intermediate_size=128, max_position_embeddings=80)
        output = "logits"
        if kind == "bert":
            m = tf.BertForSequenceClassification(tf.BertConfig(
                vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                max_position_embeddings=128, num_labels=4, attn_implementation="eager", initializer_range=init))
        elif kind == "distilbert":
            m = tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
                vocab_size=1000, dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=64,
                attn_implementation="eager"))
        elif kind == "t5-encoder":
            m = tf.T5EncoderModel(tf.T5Config(vocab_size=1000, d_model=64, d_kv=32, d_ff=128, num_layers=2,
                                              num_heads=2))
            output = "last_hidden_state"
        elif kind == "gpt2":
            m = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                                 attn_implementation="eager"))
        elif kind == "albert":  # one set of layer weights shared by every layer
            m = tf.AlbertForSequenceClassification(tf.AlbertConfig(
                embedding_size=32, hidden_size=64, num_hidden_layers=3, attn_implementation="eager", **small))
        elif kind == "deberta":  # disentangled relative-position attention
            m = tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(
                hidden_size=64, num_hidden_layers=2, relative_attention=True, position_buckets=16,
                pos_att_type=["p2c", "c2p"], **small))
        elif kind in ("llama", "qwen2", "phi3"):  # decoders: RMSNorm, rotary positions, grouped KV heads, causal mask
            config, model = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                             "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                             "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM)}[kind]
            m = model(config(hidden_size=64, num_hidden_layers=2, num_key_value_heads=1, use_cache=False,
                             attn_implementation="eager", pad_token_id=0, **small))
        elif kind == "mobilebert":  # bottlenecks, NoNorm (an elementwise affine), no LayerNorm
            m = tf.MobileBertForSequenceClassification(tf.MobileBertConfig(
                hidden_size=64, num_hidden_layers=2, embedding_size=32, intra_bottleneck_size=32, num_labels=3,
                attn_implementation="eager", **{**small, "intermediate_size": 64}))
        elif kind == "funnel":  # pooled blocks, relative attention written with einsum, token-type selection
            m = tf.FunnelForSequenceClassification(tf.FunnelConfig(
                vocab_size=1000, block_sizes=[1, 1], d_model=64, n_head=2, d_head=32, d_inner=128, num_labels=3))
        elif kind == "clip-text":
            m = tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(
                vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                projection_dim=32, max_position_embeddings=seq, attn_implementation="eager"))
            output = "text_embeds"
        elif kind == "electra":  # an embedding projection in front of a BERT encoder
            m = tf.ElectraForSequenceClassification(tf.ElectraConfig(
                hidden_size=64, num_hidden_layers=2, embedding_size=32, num_labels=3, attn_implementation="eager",
                **small))
        else:
            m = tf.RobertaForSequenceClassification(tf.RobertaConfig(
                hidden_size=64, num_hidden_layers=2, attn_implementation="eager", **small))
        names = ["input_ids", "attention_mask"]
        ids = torch.randint(0, 1000, (1, seq))
        module = _logits(m.eval(), names, output) if mask_fill is None else _additive_mask(m.eval(), mask_fill, output)
        return (module, (ids, torch.ones(1, seq, dtype=torch.int64)), names,
                ["hidden" if kind == "t5-encoder" else "embeds" if kind == "clip-text" else "logits"])
    return build


MODELS: list[ZooModel] = [
    # CNNs
    ZooModel("resnet18", "timm", _timm("resnet18"), fast=True),
    ZooModel("mobilenetv2_050", "timm", _timm("mobilenetv2_050")),
    ZooModel("mobilenetv3_small_100", "timm", _timm("mobilenetv3_small_100"), fast=True),
    ZooModel("efficientnet_b0", "timm", _timm("efficientnet_b0")),
    ZooModel("regnety_002", "timm", _timm("regnety_002")),
    ZooModel("ghostnet_100", "timm", _timm("ghostnet_100")),
    ZooModel("mixnet_s", "timm", _timm("mixnet_s")),
    ZooModel("repvgg_a0", "timm", _timm("repvgg_a0")),
    ZooModel("densenet121", "timm", _timm("densenet121")),
    ZooModel("inception_v3", "timm", _timm("inception_v3", 299)),
    ZooModel("dla34", "timm", _timm("dla34")),
    ZooModel("resnext26ts", "timm", _timm("resnext26ts")),
    ZooModel("rexnet_100", "timm", _timm("rexnet_100")),
    ZooModel("hrnet_w18_small", "timm", _timm("hrnet_w18_small")),
    ZooModel("convnext_atto", "timm", _timm("convnext_atto")),
    # transformers and hybrids
    ZooModel("vit_tiny_patch16_224", "timm", _timm("vit_tiny_patch16_224"), fast=True),
    ZooModel("deit_tiny_patch16_224", "timm", _timm("deit_tiny_patch16_224")),
    ZooModel("mobilevit_xxs", "timm", _timm("mobilevit_xxs", 256)),
    ZooModel("levit_128s", "timm", _timm("levit_128s")),
    ZooModel("efficientformerv2_s0", "timm", _timm("efficientformerv2_s0")),
    ZooModel("poolformer_s12", "timm", _timm("poolformer_s12")),
    ZooModel("coat_lite_tiny", "timm", _timm("coat_lite_tiny")),
    ZooModel("swin_tiny_patch4_window7_224", "timm", _timm("swin_tiny_patch4_window7_224")),
    # detectors
    ZooModel("yolov8n", "ultralytics", _yolo("yolov8n.yaml"), fast=True),
    ZooModel("yolo11n", "ultralytics", _yolo("yolo11n.yaml")),
    # language
    ZooModel("bert_tiny", "transformers", _hf_text("bert"), fast=True),
]


def _hf_vision(kind: str) -> Callable[[], tuple]:
    """A tiny transformers vision model (random weights) returning its logits: vit | segformer | detr (a DETR
    detector with a small ResNet backbone, one encoder and one decoder layer, 10 learned queries: class logits and
    boxes out) | dpt (DPT depth estimation: a ViT, reassembled and fused with align_corners upsampling; the depth
    map out)."""
    def build():
        import torch

        torch.manual_seed(0)
        if kind == "detr":
            import transformers as tf

            m = tf.DetrForObjectDetection(tf.DetrConfig(
                use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=tf.ResNetConfig(
                    embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], out_features=["stage4"]),
                d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=10, num_labels=5)).eval()

            class Detections(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.inner = m

                def forward(self, x):
                    o = self.inner(pixel_values=x)
                    return o.logits, o.pred_boxes

            return Detections().eval(), (torch.randn(1, 3, 224, 224),), ["input"], ["logits", "boxes"]
        if kind == "dpt":
            import transformers as tf

            m = tf.DPTForDepthEstimation(tf.DPTConfig(
                hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128, image_size=224,
                patch_size=16, neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32,
                backbone_out_indices=[0, 1, 2, 3], attn_implementation="eager"))
            return _logits(m.eval(), ["pixel_values"], "predicted_depth"), (torch.randn(1, 3, 224, 224),), ["input"], \
                ["depth"]
        if kind == "vit":
            from transformers import ViTConfig, ViTForImageClassification
            m = ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=128, num_labels=10,
                                                    attn_implementation="eager"))
        else:
            from transformers import SegformerConfig, SegformerForSemanticSegmentation
            m = SegformerForSemanticSegmentation(SegformerConfig(num_labels=5, hidden_sizes=[16, 32, 64, 128],
                                                                 decoder_hidden_size=64, depths=[1, 1, 1, 1]))
        return _logits(m, ["pixel_values"]), (torch.randn(1, 3, 224, 224),), ["input"], ["output"]
    return build


def _hf_audio(kind: str) -> Callable[[], tuple]:
    """A tiny transformers speech model (random weights): whisper-encoder (log-mel frames (16, 64) in, last hidden
    state out) | wav2vec2 (4000 raw samples in, the logits of a 3-class head out)."""
    def build():
        import torch
        import transformers as tf

        torch.manual_seed(0)
        if kind == "whisper-encoder":
            enc = tf.WhisperModel(tf.WhisperConfig(
                vocab_size=1000, num_mel_bins=16, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
                decoder_attention_heads=2, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                max_source_positions=32, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                decoder_start_token_id=1, attn_implementation="eager")).get_encoder().eval()
            module = _logits(enc, ["input_features"], "last_hidden_state")
            return module, (torch.randn(1, 16, 64),), ["input_features"], ["hidden"]
        m = tf.Wav2Vec2ForSequenceClassification(tf.Wav2Vec2Config(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, conv_dim=(32, 32, 32),
            conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            num_labels=3, attn_implementation="eager"))
        return _logits(m.eval(), ["input_values"]), (torch.randn(1, 4000),), ["input_values"], ["logits"]
    return build


#: Models outside the zoo, tried the same way (``--extra``): other tasks and families than the zoo's. The
#: second group (from mobilenetv4_conv_small on), the third (from bert_tiny_mask1e4 on) and the fourth (from detr_tiny
#: on) were added at the stops that first tried them.
EXTRA: list[ZooModel] = [
    ZooModel("pit_ti_224", "timm", _timm("pit_ti_224")),
    ZooModel("ese_vovnet19b_dw", "timm", _timm("ese_vovnet19b_dw")),
    ZooModel("efficientvit_b0", "timm", _timm("efficientvit_b0")),
    ZooModel("yolov8n_seg", "ultralytics", _yolo("yolov8n-seg.yaml", task="SegmentationModel")),
    ZooModel("yolov8n_pose", "ultralytics", _yolo("yolov8n-pose.yaml", task="PoseModel")),
    ZooModel("yolov8n_cls", "ultralytics", _yolo("yolov8n-cls.yaml", 224, task="ClassificationModel")),
    ZooModel("hf_vit_tiny", "transformers", _hf_vision("vit")),
    ZooModel("segformer_tiny", "transformers", _hf_vision("segformer")),
    ZooModel("distilbert_tiny", "transformers", _hf_text("distilbert")),
    ZooModel("mobilenetv4_conv_small", "timm", _timm("mobilenetv4_conv_small")),
    ZooModel("fastvit_t8", "timm", _timm("fastvit_t8")),
    ZooModel("edgenext_xx_small", "timm", _timm("edgenext_xx_small")),
    ZooModel("xcit_nano_12_p16_224", "timm", _timm("xcit_nano_12_p16_224")),
    ZooModel("resnest14d", "timm", _timm("resnest14d")),
    ZooModel("gcvit_xxtiny", "timm", _timm("gcvit_xxtiny")),
    ZooModel("cait_xxs24_224", "timm", _timm("cait_xxs24_224")),
    ZooModel("nf_regnet_b0", "timm", _timm("nf_regnet_b0")),
    ZooModel("crossvit_tiny_240", "timm", _timm("crossvit_tiny_240", 240)),
    ZooModel("lcnet_050", "timm", _timm("lcnet_050")),
    ZooModel("mobileone_s0", "timm", _timm("mobileone_s0")),
    ZooModel("sequencer2d_s", "timm", _timm("sequencer2d_s", random_zero_weights=True)),
    ZooModel("yolov10n", "ultralytics", _yolo("yolov10n.yaml")),
    ZooModel("yolov8n_obb", "ultralytics", _yolo("yolov8n-obb.yaml", task="OBBModel")),
    ZooModel("gpt2_tiny", "transformers", _hf_text("gpt2")),
    ZooModel("albert_tiny", "transformers", _hf_text("albert")),
    ZooModel("deberta_tiny", "transformers", _hf_text("deberta")),
    ZooModel("roberta_tiny", "transformers", _hf_text("roberta")),
    ZooModel("t5_encoder_tiny", "transformers", _hf_text("t5-encoder")),
    ZooModel("bert_tiny_mask1e4", "transformers", _hf_text("bert", mask_fill=-1e4, init=0.1)),
    ZooModel("tiny_vit_5m_224", "timm", _timm("tiny_vit_5m_224")),
    ZooModel("repvit_m0_9", "timm", _timm("repvit_m0_9")),
    ZooModel("ghostnetv2_100", "timm", _timm("ghostnetv2_100")),
    ZooModel("convnextv2_atto", "timm", _timm("convnextv2_atto")),
    ZooModel("mobilevitv2_050", "timm", _timm("mobilevitv2_050", 256)),
    ZooModel("efficientformer_l1", "timm", _timm("efficientformer_l1")),
    ZooModel("fasternet_t0", "timm", _timm("fasternet_t0")),
    ZooModel("starnet_s050", "timm", _timm("starnet_s050")),
    ZooModel("efficientvit_m0", "timm", _timm("efficientvit_m0")),
    ZooModel("pvt_v2_b0", "timm", _timm("pvt_v2_b0")),
    ZooModel("swiftformer_xs", "timm", _timm("swiftformer_xs")),
    ZooModel("mambaout_femto", "timm", _timm("mambaout_femto")),
    ZooModel("skresnet18", "timm", _timm("skresnet18")),
    ZooModel("llama_tiny", "transformers", _hf_text("llama")),
    ZooModel("qwen2_tiny", "transformers", _hf_text("qwen2")),
    ZooModel("phi3_tiny", "transformers", _hf_text("phi3")),
    ZooModel("mobilebert_tiny", "transformers", _hf_text("mobilebert")),
    ZooModel("electra_tiny", "transformers", _hf_text("electra")),
    ZooModel("whisper_encoder_tiny", "transformers", _hf_audio("whisper-encoder")),
    ZooModel("wav2vec2_tiny", "transformers", _hf_audio("wav2vec2")),
    ZooModel("detr_tiny", "transformers", _hf_vision("detr")),
    ZooModel("dpt_tiny", "transformers", _hf_vision("dpt")),
    ZooModel("funnel_tiny", "transformers", _hf_text("funnel")),
    ZooModel("clip_text_tiny", "transformers", _hf_text("clip-text")),
    ZooModel("rtdetr_l", "ultralytics", _yolo("rtdetr-l.yaml", task="RTDETRDetectionModel")),
]
BY_NAME = {m.name: m for m in MODELS + EXTRA}


# ------------------------------------------------------------------------------ export and data

def zoo_dir() -> Path:
    d = cache_dir() / "zoo"
    d.mkdir(parents=True, exist_ok=True)
    return d


def export(zm: ZooModel, folder: Path | None = None) -> Path:
    """The model's ONNX file (opset 17, batch 1), exported once into the cache folder."""
    import torch

    path = (folder or zoo_dir()) / f"{zm.name}.onnx"
    if path.exists():
        return path
    module, example, in_names, out_names = zm.build()
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings_off():
        torch.onnx.export(module, example, str(tmp), opset_version=17, input_names=in_names, output_names=out_names,
                          dynamo=False)
    tmp.replace(path)
    return path


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _photos():
    from tools.make_models import load_photos

    return load_photos()[0]


def photo_crops(n: int, size: int, seed: int, photos=None) -> np.ndarray:
    """``n`` random crops of real photos resized to ``size`` x ``size``, ImageNet-normalized NCHW float32."""
    from PIL import Image

    photos = photos or _photos()
    rng = np.random.default_rng(seed)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    out = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        img = photos[int(rng.integers(len(photos)))].pixels
        side = int(min(img.size) * rng.uniform(0.35, 1.0))
        left, top = int(rng.integers(0, img.width - side + 1)), int(rng.integers(0, img.height - side + 1))
        crop = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        out[k] = ((np.asarray(crop, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    return out


def model_data(path: Path, n: int, seed: int, photos=None) -> dict[str, np.ndarray]:
    """Inputs for every graph input of ``path``: photo crops for images, token ids and masks for text."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value for d in tt.shape.dim]
        if tt.elem_type == onnx.TensorProto.FLOAT and len(dims) == 4:
            feeds[vi.name] = photo_crops(n, dims[2], seed, photos)
        elif tt.elem_type == onnx.TensorProto.FLOAT:  # audio, spectrogram frames: no real data shipped
            feeds[vi.name] = rng.standard_normal((n, *dims[1:])).astype(np.float32)
        elif "mask" in vi.name:
            lengths = rng.integers(dims[1] // 4, dims[1] + 1, size=n)
            feeds[vi.name] = (np.arange(dims[1])[None, :] < lengths[:, None]).astype(np.int64)
        else:
            feeds[vi.name] = rng.integers(0, 1000, size=(n, *dims[1:])).astype(np.int64)
    return feeds


# ------------------------------------------------------------------------------ stages

@dataclass
class ZooRow:
    name: str
    family: str
    nodes: int = 0
    ops: str = ""
    import_ok: str = ""
    onnxptq_draws: list[float] = field(default_factory=list)  # W8A8 SQNR per calibration draw
    ort_draws: list[float] = field(default_factory=list)
    int_export: str = ""
    verify: str = ""
    int_sqnr: float | None = None  # the Po2 integer model in onnxruntime vs the float model
    lowering: str = ""  # the integer program vs the simulation (verify/lowering.py)
    int_kernels: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def onnxptq_sqnr(self) -> float | None:
        """Mean W8A8 SQNR over the draws that succeeded (None if none did)."""
        return float(np.mean(self.onnxptq_draws)) if self.onnxptq_draws else None

    @property
    def ort_sqnr(self) -> float | None:
        return float(np.mean(self.ort_draws)) if self.ort_draws else None

    def draws_not_below(self, tol: float) -> tuple[int, int]:
        """(draws where onnxptq >= quantize_static - tol, draws compared)."""
        pairs = list(zip(self.onnxptq_draws, self.ort_draws))
        return sum(a >= b - tol for a, b in pairs), len(pairs)


def _run_float(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from onnxptq.eval import run_onnxruntime

    return run_onnxruntime(str(path), feeds, batch_size=1)


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    from onnxptq.eval import sqnr_db

    return float(sqnr_db(ref, out))


def _stage(row: ZooRow, label: str, fn):
    """Run one stage; a user-facing error (OnnxPtqError) and an internal error are told apart."""
    from onnxptq.errors import OnnxPtqError

    try:
        return fn(), None
    except OnnxPtqError as e:
        msg = f"error: {str(e).splitlines()[0][:160]}"
    except Exception as e:  # noqa: BLE001 - an internal error is a finding, the zoo goes on
        logging.getLogger("zoo").debug("%s", traceback.format_exc())
        msg = f"INTERNAL {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    row.notes.append(f"{label}: {msg}")
    return None, msg


def ort_static_sqnr(pre: Path, calib: dict, feeds: dict, ref: np.ndarray, work: Path,
                    reduce_range: bool = False) -> float:
    """SQNR of onnxruntime's quantize_static on ``pre`` (the model after ``ort_preprocess``); ``reduce_range``
    (7-bit weights) where onnxruntime's docs ask for it: x86 without VNNI."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = work / f"{pre.stem}.ort.onnx"
    # onnxruntime saves large models with external data under generated names in the working folder
    with contextlib.redirect_stdout(io.StringIO()), contextlib.chdir(work):
        quantize_static(str(pre), str(out), ArrayReader(calib, batch=1), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        reduce_range=reduce_range)
    return _sqnr(ref, _run_float(out, feeds))


def run_model(zm: ZooModel, work: Path, photos=None, num_calib: int = NUM_CALIB, num_eval: int = NUM_EVAL,
              num_verify: int = NUM_VERIFY, ort: bool = True, options: dict | None = None,
              draws: int = NUM_DRAWS) -> ZooRow:
    """One model through every stage; ``options``: QuantConfig overrides for both onnxptq runs. The W8A8
    comparison runs on ``draws`` calibration draws (seeds ``calib_seed``); the first draw also gives the
    fallback notes, the kernel count and the Po2 integer export."""
    import onnx

    import onnxptq
    from onnxptq.deploy.kernels import classify_onnxruntime
    from onnxptq.targets import exact_onnxruntime_target
    from onnxptq.verify.integer import verify_integer

    t0 = time.perf_counter()
    target = exact_onnxruntime_target()  # the onnxruntime form that is exact on this CPU (targets.py)
    row = ZooRow(zm.name, zm.family)
    path, err = _stage(row, "export", lambda: export(zm))
    if path is None:
        row.import_ok = "export failed"
        return row
    proto = onnx.load(str(path))
    row.nodes = len(proto.graph.node)
    row.ops = str(len({n.op_type for n in proto.graph.node}))
    feeds = model_data(path, num_eval, seed=EVAL_SEED, photos=photos)
    ref = _run_float(path, feeds)

    info, err = _stage(row, "import", lambda: onnxptq.inspect(str(path)))
    row.import_ok = "ok" if info is not None else err
    qdq = work / f"{zm.name}.w8a8.onnx"
    first_calib, pre = None, None
    for d in range(draws):
        calib = model_data(path, num_calib, seed=calib_seed(d), photos=photos)
        first_calib = calib if first_calib is None else first_calib
        tag = "" if d == 0 else f" (draw {d + 1})"
        res, err = _stage(row, "W8A8 QDQ" + tag,
                          lambda: onnxptq.quantize(str(path), calib, output=qdq, force=True,
                                                   **{"w_bits": 8, "a_bits": 8, "num_calib": num_calib,
                                                      "target": target, **(options or {})}))
        if res is not None:
            row.onnxptq_draws.append(_sqnr(ref, _run_float(qdq, feeds)))
            if d == 0:
                fb = res.diagnostics.summary_lines()
                if fb:
                    row.notes.append("W8A8 fallbacks: " + "; ".join(fb))
                rep, _ = _stage(row, "kernels", lambda: classify_onnxruntime(qdq))
                row.int_kernels = rep.count() if rep is not None else "?"
        if ort:
            pre = pre or ort_preprocess(path, work)[0]  # once per model: every draw quantizes the same graph
            v, _ = _stage(row, "ort quantize_static" + tag, lambda: ort_static_sqnr(pre, calib, feeds, ref, work,
                                                                                      target == "onnxruntime-avx2"))
            if v is not None:
                row.ort_draws.append(v)
    intp = work / f"{zm.name}.po2.int.onnx"
    # level-1 verify needs onnxruntime exact on this CPU: 7-bit weights on x86 without VNNI (targets.py)
    res, err = _stage(row, "po2 int", lambda: onnxptq.quantize(str(path), first_calib, output=intp, force=True,
                                                                **{"w_bits": 8, "a_bits": 8, "num_calib": num_calib,
                                                                   "target": target,
                                                                   **(options or {}), "scale": "po2",
                                                                   "format": "int"}))
    row.int_export = "ok" if res is not None else err
    if res is not None:
        few = {k: v[:num_verify] for k, v in feeds.items()}
        rep, err = _stage(row, "verify", lambda: verify_integer(onnx.load(str(intp)), few, 1, num_verify,
                                                                progress=False))
        row.verify = ("pass" + (f" ({', '.join(rep.unavailable)} could not run)" if rep.unavailable else "")
                      if rep.ok else f"FAIL {rep.first or '; '.join(rep.record_problems)}") if rep is not None else err
        row.int_sqnr, _ = _stage(row, "int SQNR", lambda: _sqnr(ref, _run_float(intp, feeds)))
        row.lowering = lowering_cell(res.lowering)
    row.seconds = time.perf_counter() - t0
    return row


# ------------------------------------------------------------------------------ report

def lowering_cell(lp) -> str:
    """The lowering check in one cell: the largest local delta, the program's output vs the simulation's."""
    if lp is None:
        return "-"
    worst = max((r.max_lsb for r in lp.local.values()), default=0.0)
    head = "ok" if lp.ok else f"FAIL {len(lp.defects())} step(s)"
    out = "no quantized output" if math.isnan(lp.output_sqnr) else f"output {lp.output_sqnr:.1f} dB"
    return f"{head}: max {worst:g} LSB, {out}"


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _draws(vals: list[float]) -> str:
    return "-" if not vals else " / ".join(f"{v:.2f}" for v in vals)


TOL = 0.05  # dB: "not below quantize_static" allows this much


def table(rows: list[ZooRow]) -> str:
    lines = ["| model | family | nodes | import | W8A8 QDQ SQNR dB (onnxptq), mean | quantize_static SQNR dB "
             "(onnxruntime), mean | per draw: onnxptq | per draw: quantize_static | po2 --format int | verify level 1 "
             "| Po2 int SQNR dB | lowering check (program vs simulation) | QDQ layers on integer kernels (onnxruntime) "
             "| s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.family} | {r.nodes} | {r.import_ok} | {_f(r.onnxptq_sqnr)} | {_f(r.ort_sqnr)} "
                     f"| {_draws(r.onnxptq_draws)} | {_draws(r.ort_draws)} "
                     f"| {r.int_export} | {r.verify or '-'} | {_f(r.int_sqnr)} | {r.lowering or '-'} "
                     f"| {r.int_kernels or '-'} | {r.seconds:.0f} |")
    return "\n".join(lines)


def summary(rows: list[ZooRow]) -> str:
    n = len(rows)
    qdq = sum(r.onnxptq_sqnr is not None for r in rows)
    both = [r for r in rows if r.onnxptq_sqnr is not None and r.ort_sqnr is not None]
    not_below = sum(r.onnxptq_sqnr >= r.ort_sqnr - TOL for r in both)
    per_draw = [r.draws_not_below(TOL) for r in both]
    ver = sum(r.verify.startswith("pass") for r in rows)
    partial = sum(r.verify.startswith("pass (") for r in rows)  # an engine (onnx.reference) could not run it
    without = f" ({partial} without onnx.reference, which could not run them)" if partial else ""
    low = sum(r.lowering.startswith("ok") for r in rows)
    internal = sum(any("INTERNAL" in x for x in r.notes) for r in rows)
    return (f"{n} models: W8A8 QDQ {qdq}/{n}, mean SQNR not below quantize_static's ({TOL} dB tolerance) "
            f"{not_below}/{len(both)} compared (per draw: {sum(a for a, _ in per_draw)}/{sum(b for _, b in per_draw)}), "
            f"po2 int + level-1 verify {ver}/{n}{without}, lowering check within 1 LSB {low}/{n}, "
            f"internal errors in {internal}.")


def section_name(extra: bool, options: dict, subset: list[str]) -> tuple[str, str]:
    """(section key, title suffix) of a ``--out`` run: a variant (``--set``) and a subset (``--only``,
    ``--fast``) each get their own section, so neither replaces the full table."""
    key = ("zoo-extra" if extra else "zoo") + "".join(f"-{k}-{v}" for k, v in options.items())
    suffix = " — with " + ", ".join(f"{k}={v}" for k, v in options.items()) if options else ""
    if subset:
        key += "-only-" + ",".join(subset)
        suffix += " — only " + ", ".join(subset)
    return key, suffix


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated model names (default: all): " +
                   ", ".join(m.name for m in MODELS))
    p.add_argument("--fast", action="store_true", help="only the test suite's subset")
    p.add_argument("--extra", action="store_true", help="the models outside the zoo instead: " +
                   ", ".join(m.name for m in EXTRA))
    p.add_argument("--num-calib", type=int, default=NUM_CALIB)
    p.add_argument("--num-eval", type=int, default=NUM_EVAL)
    p.add_argument("--draws", type=int, default=NUM_DRAWS, help="calibration draws of the W8A8 comparison "
                   "(each quantizer's SQNR is their mean)")
    p.add_argument("--out", default="", help="markdown file whose zoo section is regenerated")
    p.add_argument("--no-ort", action="store_true", help="skip onnxruntime quantize_static")
    p.add_argument("--set", nargs="*", default=[], help="QuantConfig overrides of the onnxptq runs, e.g. "
                   "a_scale_method=minmax (the --out section then names them)")
    args = p.parse_args(argv)
    names = [s for s in args.only.split(",") if s]
    unknown = [s for s in names if s not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {', '.join(BY_NAME)}")
    models = [BY_NAME[s] for s in names] if names else EXTRA if args.extra else [
        m for m in MODELS if m.fast or not args.fast]
    options = parse_sets(args.set)
    logging.basicConfig(level=logging.ERROR)
    m_info = machine_info()
    photos = _photos()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxptq-zoo-") as tmp:
        for zm in models:
            print(f"== {zm.name} ...", file=sys.stderr, flush=True)
            row = run_model(zm, Path(tmp), photos, args.num_calib, args.num_eval, ort=not args.no_ort,
                            options=options, draws=args.draws)
            rows.append(row)
            for note in row.notes:
                print(f"   {note}", file=sys.stderr)
    body = [table(rows), "", summary(rows)]
    notes = [f"- {r.name}: " + "; ".join(r.notes) for r in rows if r.notes]
    if notes:
        body += ["", "Notes:", *notes]
    print("\n".join(body))
    if args.out:
        cmd = command_line(argv).replace("tools/bench.py", "tools/zoo.py")
        text = "\n".join([
            "## Model zoo (issue 16): random-weight timm / ultralytics / transformers models, W8A8 and Po2 integer",
            "", f"Reproduce: `{cmd}`", "", f"Machine: {machine_line(m_info)}.", "",
            f"Each model exported by `torch.onnx.export` (opset 17, batch 1 fixed); {args.num_calib} calibration and "
            f"{args.num_eval} evaluation samples (real-photo crops; BERT: random token ids with a padding mask). "
            "SQNR: the quantized model in onnxruntime against the float model in onnxruntime, on the same evaluation "
            f"samples; the W8A8 columns are the mean over {args.draws} independent calibration draws (seeds "
            f"{', '.join(str(calib_seed(d)) for d in range(args.draws))}), with each draw's value beside it: on "
            "these random-weight models one draw of 32 samples moves either quantizer's SQNR by up to several dB. "
            "The Po2 integer export uses the first draw. "
            "quantize_static: MinMax, QUInt8 activations, QInt8 per-channel weights, QDQ, after quant_pre_process. "
            f"verify: `verify_integer` on {NUM_VERIFY} samples (runtime/ vs onnxruntime vs the integer simulation). "
            "Po2 int SQNR: the integer model in onnxruntime against the float model. Lowering check: the integer "
            "program against the fake-quant simulation on the first 4 calibration samples (verify/lowering.py): "
            "the largest difference one integer step adds (LSB, teacher-forced) and the program's output SQNR "
            "against the simulation's.",
            "", *body])
        if args.extra:
            text = text.replace("## Model zoo (issue 16): random-weight timm / ultralytics / transformers models",
                                "## Models outside the zoo (issue 16): other tasks and families, tried the same way", 1)
        key, suffix = section_name(args.extra, options, names or (["fast"] if args.fast else []))
        title = text.split("\n", 1)[0]
        text = text.replace(title, title + suffix, 1)
        write_section(Path(args.out), key, text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"error: {e}")
