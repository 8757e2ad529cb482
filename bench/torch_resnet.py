"""The PyTorch twin of `bnjax.models.resnet.CifarResNet`, for the baseline only.

Same architecture as bnjax's model so that throughput comparisons are fair:
a 3x3 stem with 16 channels, three stages of n basic blocks at 16/32/64
channels, global average pooling and one linear classifier, with every
value of bnjax's `model.shortcut` (`SHORTCUTS`):

* "A": identity, or stride-2 subsampling and zero-padded channels where the
  shape changes.
* "B": identity, or a 1x1 projection conv (`projection`) followed by the
  stage's normalisation layer where the shape changes.
* "none": He et al.'s plain network, every block relu(branch(x)); "fixup"
  and "skipinit" refuse it, as bnjax does.

and with every value of bnjax's `model.norm` (`NORMS`; bnjax/models/layers.py
defines them):

* "batch": BatchNorm2d after every convolution, PyTorch's defaults
  (momentum 0.1, eps 1e-5), which are bnjax's.
* "none": no normalisation; the convolutions carry a bias.
* "layer": GroupNorm with one group (eps 1e-5): each example normalised over
  (C, H, W), a scale and shift per channel, as bnjax's LayerNorm.
* "group": GroupNorm of adjacent channels, 32 groups from 64 channels up and
  groups of 2 channels below (8 and 16 at widths 16 and 32), as bnjax's.
* "fixup": Fixup (`BasicBlock.fixup_branch`): bias-free convolutions, scalar
  biases (0) and one scalar multiplier (1) per branch, the branch's first
  conv He-normal times L^(-1/2) (L = 3n blocks), its second conv and the
  classifier zero, and scalar biases after the stem and before the head. A
  projection takes x + bias1a and stays plain He-normal.
* "skipinit": "none" with a scalar alpha (0) multiplying each branch.
* "batch_first", "batch_last", "batch_except_last", "batch_head": BN in the
  stem and stage 1, in stage 3, everywhere but stage 3, or only as a
  BatchNorm1d of the pooled features; "none" elsewhere.

Kernels are He-normal (bnjax's initializer "he_normal"; its default is
Glorot-uniform, which changes no step time), biases zero, norm scales 1 and
shifts 0, and Fixup's parts as bnjax initialises them. Module names
follow bnjax's (`stem.conv`, `conv_norm1.norm`, `projection.conv`, `alpha`, ...), so
its parameters map one to one onto these (kernels HWIO -> OIHW).

Only the benchmark imports this module; bnjax itself never imports torch,
and this module does not import bnjax (the baseline's process stays free of
JAX).
"""

import torch
from torch import nn
from torch.nn import functional as F

STAGE_WIDTHS = (16, 32, 64)
# bnjax.models.layers.NORMS, in its order (a test keeps the two equal).
NORMS = ("batch", "none", "layer", "group", "fixup", "skipinit",
         "batch_first", "batch_last", "batch_except_last", "batch_head")
# Where the partial-BN arms put batch norm: 0 is the stem, 1..3 the stages.
_BN_STAGES = {"batch_first": (0, 1), "batch_last": (3,), "batch_except_last": (0, 1, 2),
              "batch_head": ()}
# bnjax.models.resnet.SHORTCUTS and RESIDUAL_ONLY_NORMS (a test keeps them equal).
SHORTCUTS = ("A", "B", "none")
RESIDUAL_ONLY_NORMS = ("fixup", "skipinit")
GROUPS = 32  # Wu & He (2018), as bnjax's "group" (bnjax.models.layers.num_groups)
EPS = 1e-5


def blocks_per_stage(depth: int) -> int:
  """n for a CIFAR ResNet of depth 6n+2."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"ResNet depth {depth} is not of the form 6n+2 with n >= 1.")
  return (depth - 2) // 6


def check_norm(norm: str) -> None:
  """Raises ValueError, in bnjax's words, unless `norm` is one of `NORMS`."""
  if norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}; use one of {list(NORMS)}.")


def check_shortcut(shortcut: str, norm: str) -> None:
  """Raises ValueError, in bnjax's words, for an unknown `shortcut` or one `norm` cannot use."""
  if shortcut not in SHORTCUTS:
    raise ValueError(f"Unknown shortcut option {shortcut!r}; use one of {list(SHORTCUTS)}.")
  if shortcut == "none" and norm in RESIDUAL_ONLY_NORMS:
    raise ValueError(f"norm {norm!r} needs a shortcut; use shortcut 'A' or 'B'.")


def stage_norm(norm: str, stage: int) -> str:
  """What the network's `norm` puts in the stem (stage 0) or the blocks of stage 1..3.

  The partial-BN arms become "batch" or "none" stage by stage, as in bnjax.
  """
  check_norm(norm)
  if norm in _BN_STAGES:
    return "batch" if stage in _BN_STAGES[norm] else "none"
  return norm


def conv_norm(norm: str) -> str:
  """The layer after each convolution under a stage's `norm`: Fixup and SkipInit use none."""
  return "none" if norm in ("fixup", "skipinit") else norm


def scalar(value: float) -> nn.Parameter:
  """A learned scalar, shape (), initialised to `value`: Fixup's biases, SkipInit's alpha."""
  return nn.Parameter(torch.full((), value))


class ConvNorm(nn.Module):
  """A 3x3 (or 1x1) convolution followed by `norm` ("batch", "layer", "group" or "none").

  The convolution carries a bias unless the normalisation has its own shift,
  or `bias` says otherwise (Fixup's convolutions have none).
  """

  def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str,
               bias: bool | None = None, kernel_size: int = 3):
    super().__init__()
    if norm not in ("batch", "layer", "group", "none"):
      raise ValueError(f"Unknown normalisation layer {norm!r}; use 'batch', 'layer', 'group'"
                       " or 'none'.")
    bias = norm == "none" if bias is None else bias
    self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                          bias=bias)
    if norm == "batch":
      self.norm = nn.BatchNorm2d(out_channels, eps=EPS, momentum=0.1)
    elif norm == "layer":
      self.norm = nn.GroupNorm(1, out_channels, eps=EPS)
    elif norm == "group":
      groups = max(g for g in range(1, GROUPS + 1) if out_channels % g == 0
                   and (g == 1 or out_channels // g >= 2))
      self.norm = nn.GroupNorm(groups, out_channels, eps=EPS)
    else:
      self.norm = nn.Identity()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.norm(self.conv(x))


class BasicBlock(nn.Module):
  """Two ConvNorms with a ReLU between them, plus the shortcut ("A", "B" or "none").

  `norm` is the stage's (`stage_norm`); `num_blocks` is L, the network's
  number of blocks, which sets Fixup's initial scale. Under shortcut "B" a
  block whose shape changes holds a 1x1 ConvNorm `projection`, bias-free
  under Fixup, as bnjax's.
  """

  def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str,
               num_blocks: int = 1, shortcut: str = "A"):
    super().__init__()
    check_shortcut(shortcut, norm)
    self.fixup, self.skipinit = norm == "fixup", norm == "skipinit"
    layer_norm, bias = conv_norm(norm), False if self.fixup else None
    self.conv_norm1 = ConvNorm(in_channels, out_channels, stride, layer_norm, bias)
    self.conv_norm2 = ConvNorm(out_channels, out_channels, 1, layer_norm, bias)
    self.stride = stride
    self.extra = out_channels - in_channels
    self.num_blocks = num_blocks
    self.shortcut_option = shortcut
    if shortcut == "B" and not self.is_identity():
      self.projection = ConvNorm(in_channels, out_channels, stride, layer_norm, bias,
                                 kernel_size=1)
    if self.skipinit:
      self.alpha = scalar(0.0)
    if self.fixup:
      self.bias1a, self.bias1b, self.bias2a = scalar(0.0), scalar(0.0), scalar(0.0)
      self.scale, self.bias2b = scalar(1.0), scalar(0.0)

  def is_identity(self) -> bool:
    """True when the shape does not change, so shortcuts "A" and "B" pass the input through."""
    return self.stride == 1 and self.extra == 0

  def shortcut(self, x: torch.Tensor) -> torch.Tensor | None:
    """The shortcut path of `x`, or None in a plain network (shortcut "none").

    Where the shape changes, "A" subsamples with stride 2 and zero-pads the
    channels, and "B" is the 1x1 projection and its normalisation.
    """
    if self.shortcut_option == "none":
      return None
    if self.is_identity():
      return x
    if self.shortcut_option == "B":
      return self.projection(x)
    x = x[:, :, ::self.stride, ::self.stride]
    return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

  def branch(self, x: torch.Tensor) -> torch.Tensor:
    """The residual branch, before the shortcut is added."""
    if self.fixup:
      return self.fixup_branch(x)
    y = self.conv_norm2(F.relu(self.conv_norm1(x)))
    return y * self.alpha if self.skipinit else y

  def fixup_branch(self, x: torch.Tensor) -> torch.Tensor:
    """scale * conv2(relu(conv1(x + bias1a) + bias1b) + bias2a) + bias2b, as bnjax's `_fixup`."""
    y = F.relu(self.conv_norm1(x + self.bias1a) + self.bias1b)
    return self.conv_norm2(y + self.bias2a) * self.scale + self.bias2b

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    # Fixup's shortcut takes x + bias1a where it is not the identity, as bnjax's.
    skip = self.shortcut(x + self.bias1a if self.fixup and not self.is_identity() else x)
    y = self.branch(x)
    return F.relu(y if skip is None else y + skip)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 images in NCHW (use channels_last memory format).

  `norm` and `shortcut` take bnjax's values (`NORMS`, `SHORTCUTS`) and
  refuse what bnjax refuses, in its words.
  """

  def __init__(self, depth: int = 20, norm: str = "batch", shortcut: str = "A",
               num_classes: int = 10):
    super().__init__()
    n = blocks_per_stage(depth)
    check_norm(norm)
    check_shortcut(shortcut, norm)
    self.norm = norm
    fixup = norm == "fixup"
    self.stem = ConvNorm(3, STAGE_WIDTHS[0], 1, conv_norm(stage_norm(norm, 0)),
                         False if fixup else None)
    blocks, in_channels = [], STAGE_WIDTHS[0]
    for stage, width in enumerate(STAGE_WIDTHS):
      for i in range(n):
        blocks.append(BasicBlock(in_channels, width, 2 if stage > 0 and i == 0 else 1,
                                 stage_norm(norm, stage + 1), num_blocks=3 * n,
                                 shortcut=shortcut))
        in_channels = width
    self.blocks = nn.Sequential(*blocks)
    if fixup:
      self.stem_bias, self.head_bias = scalar(0.0), scalar(0.0)
    if norm == "batch_head":
      self.head_norm = nn.BatchNorm1d(in_channels, eps=EPS, momentum=0.1)
    self.classifier = nn.Linear(in_channels, num_classes)
    self.reset_parameters()

  def reset_parameters(self) -> None:
    """He-normal kernels (N(0, 2/fan_in)), as bnjax's "he_normal", and Fixup's rules.

    Biases are zero and norm scales 1, shifts 0. Under Fixup each branch's
    first conv is scaled by L^(-1/2) and its second conv and the classifier
    are zero, so every branch and every logit start at 0; projections
    (outside the branch) stay plain He-normal, and the scalar parameters
    keep the values they were made with.
    """
    for module in self.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
          nn.init.zeros_(module.bias)
      elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if self.norm == "fixup":
      with torch.no_grad():
        for block in self.blocks:
          block.conv_norm1.conv.weight.mul_(block.num_blocks ** -0.5)
          nn.init.zeros_(block.conv_norm2.conv.weight)
      nn.init.zeros_(self.classifier.weight)

  def forward(self, x_BxCxHxW: torch.Tensor) -> torch.Tensor:
    x = self.stem(x_BxCxHxW)
    if self.norm == "fixup":
      x = x + self.stem_bias
    x = self.blocks(F.relu(x))
    x = x.mean(dim=(2, 3))
    if self.norm == "batch_head":
      x = self.head_norm(x)
    if self.norm == "fixup":
      x = x + self.head_bias
    return self.classifier(x)


def num_parameters(model: nn.Module) -> int:
  """Trainable parameters (BN running statistics are buffers, not counted)."""
  return sum(p.numel() for p in model.parameters())
