"""8-bit encoder for propagation on CPUs without native bfloat16.

There the stride-8 ResNet-18 costs half of every propagated frame in float32 (0.32 s of ~0.65 s at 480p on a
2-core AVX2 CPU). Post-training static quantization (PyTorch's FX graph mode, x86 backend: int8 weights per output
channel, int8 activations) halves it; the ranges of the activations are calibrated on the video's first frame, so
nothing has to ship beside the float weights.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .networks import LAYER2_END, FrameEncoder, join_layer2, lab_to_network_input

BACKEND = "x86"


def int8_available() -> bool:
    """Whether this PyTorch build has the quantized CPU kernels and FX post-training quantization."""
    if BACKEND not in torch.backends.quantized.supported_engines:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_fx  # noqa: F401  (deprecated upstream, still shipped)
    except ImportError:
        return False
    return True


class _Layer2AndOutput(nn.Module):
    """The encoder's body split after layer2: network input -> (layer2, output), both un-normalized."""

    def __init__(self, encoder: FrameEncoder):
        super().__init__()
        self.low, self.high = encoder.body[:LAYER2_END], encoder.body[LAYER2_END:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer2 = self.low(x)
        return layer2, self.high(layer2)


class Int8Encoder(nn.Module):
    """A ``UVC`` model's encoder quantized to int8, calibrated on given frames; the ``features`` interface of the
    model it came from (``UVC.features``), on the CPU."""

    def __init__(self, encoder: FrameEncoder, calibration_lab: torch.Tensor):
        """encoder: a float encoder in eval mode (batch norms may already be folded); calibration_lab: Lab
        (B, 3, H, W) frames whose activations set the int8 ranges."""
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice of torch.ao.quantization, once per video
            from torch.ao.quantization import MinMaxObserver, QConfig, QConfigMapping, quantize_fx
            from torch.ao.quantization.observer import default_per_channel_weight_observer
            torch.backends.quantized.engine = BACKEND  # process-wide; the kernels these modules were built for
            body = _Layer2AndOutput(encoder).cpu().eval()
            x = lab_to_network_input(calibration_lab.cpu(), encoder.in_channels).contiguous()
            # min / max activation ranges: calibrating costs half of the x86 default's histograms (1.3 vs 2.6 s per
            # video on a 2-core AVX2 CPU), features at cosine 0.996 vs 0.997 to the float ones; reduce_range keeps
            # the int8 products from saturating on CPUs without VNNI, as the x86 default does
            qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=True),
                              weight=default_per_channel_weight_observer)
            prepared = quantize_fx.prepare_fx(body, QConfigMapping().set_global(qconfig), (x,))
            with torch.no_grad():
                prepared(x)
            self.body = quantize_fx.convert_fx(prepared)
        self.in_channels = encoder.in_channels
        self.register_buffer("anchor", torch.zeros(1))  # gives the module a device

    @torch.no_grad()
    def features(self, lab: torch.Tensor, layer2_weight: float = 0.0) -> torch.Tensor:
        """Lab (B, 3, H, W) -> L2-normalized features (B, C, H / 8, W / 8), or with ``layer2_weight`` > 0 layer2's
        joined to them (128 + C channels, as ``FrameEncoder.with_layer2``)."""
        layer2, out = self.body(lab_to_network_input(lab, self.in_channels).contiguous())
        return join_layer2(layer2, out, layer2_weight) if layer2_weight > 0 else F.normalize(out, dim=1)
