"""The PyTorch twin of `bnjax.models.resnet.CifarResNet`, for the baseline only.

Same architecture as bnjax's model so that throughput comparisons are fair:
a 3x3 stem with 16 channels, three stages of n basic blocks at 16/32/64
channels, option A shortcuts (stride-2 subsampling and zero-padded
channels), batch norm with PyTorch's defaults or no normalisation (then the
convolutions carry a bias, as in bnjax), He-normal kernels, zero biases,
global average pooling and one linear classifier.

Only the benchmark imports this module; bnjax itself never imports torch.
"""

import torch
from torch import nn
from torch.nn import functional as F

STAGE_WIDTHS = (16, 32, 64)


def blocks_per_stage(depth: int) -> int:
  """n for a CIFAR ResNet of depth 6n+2."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"ResNet depth {depth} is not of the form 6n+2 with n >= 1.")
  return (depth - 2) // 6


class ConvNorm(nn.Sequential):
  """A 3x3 convolution followed by batch norm, or a biased convolution alone."""

  def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
    use_bn = norm == "batch"
    if norm not in ("batch", "none"):
      raise ValueError(f"Unknown norm {norm!r}; use 'batch' or 'none'.")
    layers = [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=not use_bn)]
    if use_bn:
      layers.append(nn.BatchNorm2d(out_channels, momentum=0.1, eps=1e-5))
    super().__init__(*layers)


class BasicBlock(nn.Module):
  """Two ConvNorms with a ReLU between them, plus the option A shortcut."""

  def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
    super().__init__()
    self.conv_norm1 = ConvNorm(in_channels, out_channels, stride, norm)
    self.conv_norm2 = ConvNorm(out_channels, out_channels, 1, norm)
    self.stride = stride
    self.extra = out_channels - in_channels

  def shortcut(self, x: torch.Tensor) -> torch.Tensor:
    if self.stride == 1 and self.extra == 0:
      return x
    x = x[:, :, ::self.stride, ::self.stride]
    return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.conv_norm2(F.relu(self.conv_norm1(x)))
    return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 images in NCHW (use channels_last memory format)."""

  def __init__(self, depth: int = 20, norm: str = "batch", num_classes: int = 10):
    super().__init__()
    n = blocks_per_stage(depth)
    self.stem = ConvNorm(3, STAGE_WIDTHS[0], 1, norm)
    blocks, in_channels = [], STAGE_WIDTHS[0]
    for stage, width in enumerate(STAGE_WIDTHS):
      for i in range(n):
        blocks.append(BasicBlock(in_channels, width, 2 if stage > 0 and i == 0 else 1, norm))
        in_channels = width
    self.blocks = nn.Sequential(*blocks)
    self.classifier = nn.Linear(in_channels, num_classes)
    self.reset_parameters()

  def reset_parameters(self) -> None:
    """He-normal kernels (N(0, 2/fan_in)), zero biases, BN scale 1 and shift 0."""
    for module in self.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
          nn.init.zeros_(module.bias)
      elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

  def forward(self, x_BxCxHxW: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem(x_BxCxHxW))
    x = self.blocks(x)
    return self.classifier(x.mean(dim=(2, 3)))


def num_parameters(model: nn.Module) -> int:
  """Trainable parameters (BN running statistics are buffers, not counted)."""
  return sum(p.numel() for p in model.parameters())
