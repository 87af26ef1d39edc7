"""Networks of the correspondence model: the stride-8 ResNet-18 (on L, or on Lab) and the Lab colour autoencoder."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.nn.utils.fusion import fuse_conv_bn_eval


def normalize_lab(lab: torch.Tensor) -> torch.Tensor:
    """Lab (B, 3, H, W) -> each channel roughly in [-1, 1] (L / 50 - 1, a / 110, b / 110): the AE's space."""
    scale = lab.new_tensor([50.0, 110.0, 110.0]).view(1, 3, 1, 1)
    shift = lab.new_tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return lab / scale - shift


def denormalize_lab(lab_normalized: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_lab`."""
    scale = lab_normalized.new_tensor([50.0, 110.0, 110.0]).view(1, 3, 1, 1)
    shift = lab_normalized.new_tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return (lab_normalized + shift) * scale


# a and b of video frames spread less than L (standard deviations ~10 and ~18 vs 25 on the training frames): over
# 30 they reach about L / 50's spread, so weights on colour learn at L's pace
ENCODER_COLOR_SCALE = 30.0


def lab_to_network_input(lab: torch.Tensor, channels: int = 1, color_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Lab (B, 3, H, W) with L in [0, 100] -> the encoder's input (B, channels, H, W): L / 50 - 1 (``channels=1``,
    UVC), then a / 30 and b / 30 (``channels=3``). ``color_keep`` (B,) zeroes a and b of the samples where it is 0
    (colour dropout in training)."""
    gray = lab[:, :1] / 50.0 - 1.0
    if channels == 1:
        return gray
    color = lab[:, 1:] / ENCODER_COLOR_SCALE
    if color_keep is not None:
        color = color * color_keep.view(-1, 1, 1, 1)
    return torch.cat([gray, color], dim=1)


LAYER2_END = 6  # FrameEncoder.body[:6] = conv1, bn1, relu, maxpool, layer1, layer2


class FrameEncoder(nn.Module):
    """ResNet-18 (torchvision definition, random init) on the L channel (``in_channels=1``, UVC) or on Lab (3),
    output stride 8.

    ``use_layer4=False`` stops after layer3 (256-d, layer3 with stride 1, as CRW); ``True`` keeps layer4 with
    stride 1 too (512-d, as UVC). Output features are L2-normalized over channels.
    """

    def __init__(self, use_layer4: bool = False, in_channels: int = 1):
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.in_channels = in_channels
        layers = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
        _make_stride_one(net.layer3)
        if use_layer4:
            _make_stride_one(net.layer4)
            layers.append(net.layer4)
        self.body = nn.Sequential(*layers)
        self.out_channels = 512 if use_layer4 else 256

    def forward(self, lab: torch.Tensor, color_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Lab (B, 3, H, W) -> L2-normalized features (B, C, H / 8, W / 8); ``color_keep``: see
        :func:`lab_to_network_input`."""
        return F.normalize(self.body(lab_to_network_input(lab, self.in_channels, color_keep)), dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # An L-only checkpoint loads into a Lab encoder with zero weights on a and b: the same function to start
        # from, so a trained L encoder can go on learning with colour.
        key = prefix + "body.0.weight"
        weight = state_dict.get(key)
        if weight is not None and weight.shape[1] == 1 and self.in_channels > 1:
            state_dict[key] = torch.cat([weight, weight.new_zeros(weight.shape[0], self.in_channels - 1,
                                                                  *weight.shape[2:])], dim=1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def with_layer2(self, lab: torch.Tensor, layer2_weight: float) -> torch.Tensor:
        """Lab (B, 3, H, W) -> (B, 128 + C, H / 8, W / 8): layer2's features and the output's, each L2-normalized
        and scaled by sqrt(w) and sqrt(1 - w), so a dot product is w * layer2's cosine + (1 - w) * the output's.

        layer2 (stride 8 too) keeps finer appearance than the stride-1 layers after it; it runs anyway, so only
        the join costs (~3 ms per 480p frame).
        """
        layer2 = self.body[:LAYER2_END](lab_to_network_input(lab, self.in_channels))
        return join_layer2(layer2, self.body[LAYER2_END:](layer2), layer2_weight)


def join_layer2(layer2: torch.Tensor, out: torch.Tensor, layer2_weight: float) -> torch.Tensor:
    """Un-normalized layer2 (B, 128, h, w) and output (B, C, h, w) features -> (B, 128 + C, h, w), each part
    L2-normalized and scaled by sqrt(w) and sqrt(1 - w) (see ``FrameEncoder.with_layer2``)."""
    return torch.cat([F.normalize(layer2, dim=1) * layer2_weight ** 0.5,
                      F.normalize(out, dim=1) * (1 - layer2_weight) ** 0.5], dim=1)


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d among a module's children into that convolution,
    recursively and in place; returns ``module``.

    For inference only (the running statistics are baked in): the eval-mode function is unchanged, one pass over
    each activation less (480p encoder pass 0.287 -> 0.270 s on a 2-core CPU). Assumes children are registered in
    the order they run, as in ``nn.Sequential`` and torchvision's ResNet blocks.
    """
    names = list(module._modules)
    for name, next_name in zip(names, names[1:] + [None]):
        child, follower = module._modules[name], module._modules.get(next_name) if next_name else None
        if isinstance(child, nn.Conv2d) and isinstance(follower, nn.BatchNorm2d):
            module._modules[name] = fuse_conv_bn_eval(child.eval(), follower.eval())
            module._modules[next_name] = nn.Identity()
        elif child is not None:
            fuse_batchnorm(child)
    return module


def _make_stride_one(layer: nn.Sequential) -> None:
    block = layer[0]
    block.conv1.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class ColorAutoencoder(nn.Module):
    """Lab colour autoencoder: stride-8 encoder (B, 3, H, W) -> (B, D, H/8, W/8) and decoder back to Lab.

    Works in the normalized Lab space of :func:`normalize_lab`. Trained once on video frames, then frozen: the
    correspondence model reconstructs a target's AE features from the reference's and decodes them.
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(_conv(3, 32), _conv(32, 32, 2), _conv(32, 64), _conv(64, 64, 2),
                                     _conv(64, 64), _conv(64, channels, 2), nn.Conv2d(channels, channels, 3, 1, 1))
        self.decoder = nn.Sequential(_conv(channels, 64), nn.Upsample(scale_factor=2, mode="bilinear"),
                                     _conv(64, 64), nn.Upsample(scale_factor=2, mode="bilinear"),
                                     _conv(64, 32), nn.Upsample(scale_factor=2, mode="bilinear"),
                                     _conv(32, 32), nn.Conv2d(32, 3, 3, 1, 1))
        self.channels = channels

    def encode(self, lab: torch.Tensor) -> torch.Tensor:
        """Lab (B, 3, H, W), L in [0, 100] -> (B, D, H / 8, W / 8)."""
        return self.encoder(normalize_lab(lab))

    def forward(self, lab: torch.Tensor) -> torch.Tensor:
        """Lab (B, 3, H, W) -> its reconstruction in normalized Lab (B, 3, H, W)."""
        return self.decode(self.encode(lab))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> normalized Lab (B, 3, 8h, 8w) (see :func:`normalize_lab`)."""
        return self.decoder(code)
