"""Single-output crack segmentation networks: UNet, NestedUNet (UNet++) and AttentionUNet.

Every model maps a Bx3xHxW image (H, W multiples of its `input_multiple`: 16 for four poolings) to Bx1xHxW logits.
`build_model("UNet")` is the one way scripts construct a model.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval


def widths(base_width: int, depth: int = 4) -> list[int]:
    """Filters per scale: [32, 64, 128, 256, 512] for the reference base width of 32 and 4 poolings."""
    return [base_width * 2**i for i in range(depth + 1)]


class VGGBlock(nn.Sequential):
    """conv3x3 - BN - ReLU - conv3x3 - BN - ReLU."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, dilation: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def upsample(x: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Bilinear x2. align_corners=True (the reference) stretches the corner pixels' grid over the
    map, so the result depends on the map's size and a tile never equals the same region of a
    whole image; False samples pixel centres, the same wherever the map starts on the pooling grid."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners)


class UNet(nn.Module):
    """Four 2x2 poolings down (the reference; `depth` 5 adds a fifth, which doubles the view of the
    bottleneck), bilinear upsampling and concatenation back up. `bottleneck_dilation` spaces the
    bottleneck's 3x3 taps that many cells apart: a wider view at no cost in weights or time."""
    input_multiple = 16   # what H and W must divide by: 2 ** poolings

    def __init__(self, *, in_channels: int = 3, out_channels: int = 1, base_width: int = 32,
                 align_corners: bool = True, depth: int = 4, bottleneck_dilation: int = 1):
        super().__init__()
        f = widths(base_width, depth)
        self.align_corners = align_corners
        self.input_multiple = 2**depth
        self.pool = nn.MaxPool2d(2)
        self.enc = nn.ModuleList([VGGBlock(in_channels, f[0], f[0])] +
                                 [VGGBlock(f[i - 1], f[i], f[i], bottleneck_dilation if i == depth else 1)
                                  for i in range(1, depth + 1)])
        self.dec = nn.ModuleList([VGGBlock(f[i] + f[i + 1], f[i], f[i]) for i in range(depth)])
        self.head = nn.Conv2d(f[0], out_channels, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.enc[0](x)]                                  # B,f0,H,W
        for block in self.enc[1:]:
            features.append(block(self.pool(features[-1])))          # halves H, W each time
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encode(x)
        y = features[-1]                                             # B,f4,H/16,W/16 at depth 4
        for i in reversed(range(len(self.dec))):
            y = self.dec[i](torch.cat([features[i], upsample(y, self.align_corners)], 1))
        return self.head(y)                                          # B,1,H,W


class AttentionGate(nn.Module):
    """Additive attention: weights the skip feature x by a map computed from x and the gate g."""

    def __init__(self, skip_channels: int, gate_channels: int, inner_channels: int):
        super().__init__()
        self.from_skip = nn.Sequential(nn.Conv2d(skip_channels, inner_channels, 1),
                                       nn.BatchNorm2d(inner_channels))
        self.from_gate = nn.Sequential(nn.Conv2d(gate_channels, inner_channels, 1),
                                       nn.BatchNorm2d(inner_channels))
        self.to_weight = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(inner_channels, 1, 1),
                                       nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.to_weight(self.from_skip(x) + self.from_gate(g))   # B,Cx,H,W


class AttentionUNet(UNet):
    """UNet whose skip connections pass through attention gates driven by the upsampled decoder."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 1, base_width: int = 32,
                 align_corners: bool = True):
        super().__init__(in_channels=in_channels, out_channels=out_channels, base_width=base_width,
                         align_corners=align_corners)
        f = widths(base_width)
        self.gates = nn.ModuleList([AttentionGate(f[i], f[i + 1], max(f[i] // 2, 1))
                                    for i in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encode(x)
        y = features[4]
        for i in reversed(range(4)):
            up = upsample(y, self.align_corners)                     # B,f[i+1],H_i,W_i
            y = self.dec[i](torch.cat([self.gates[i](features[i], up), up], 1))
        return self.head(y)


class NestedUNet(nn.Module):
    """UNet++: node x{i}_{j} sees every earlier node of row i and the upsampled x{i+1}_{j-1}."""
    input_multiple = 16

    def __init__(self, *, in_channels: int = 3, out_channels: int = 1, base_width: int = 32,
                 deep_supervision: bool = False, align_corners: bool = True):
        super().__init__()
        f = widths(base_width)
        self.deep_supervision, self.align_corners = deep_supervision, align_corners
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleDict()
        for i in range(5):
            self.nodes[f"x{i}_0"] = VGGBlock(in_channels if i == 0 else f[i - 1], f[i], f[i])
        for j in range(1, 5):
            for i in range(5 - j):
                self.nodes[f"x{i}_{j}"] = VGGBlock(f[i] * j + f[i + 1], f[i], f[i])
        n_heads = 4 if deep_supervision else 1
        self.heads = nn.ModuleList([nn.Conv2d(f[0], out_channels, 1) for _ in range(n_heads)])

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        grid: dict[tuple[int, int], torch.Tensor] = {(0, 0): self.nodes["x0_0"](x)}
        for i in range(1, 5):
            grid[i, 0] = self.nodes[f"x{i}_0"](self.pool(grid[i - 1, 0]))
        for j in range(1, 5):
            for i in range(5 - j):
                inputs = [grid[i, k] for k in range(j)] + [upsample(grid[i + 1, j - 1], self.align_corners)]
                grid[i, j] = self.nodes[f"x{i}_{j}"](torch.cat(inputs, 1))
        if not self.deep_supervision:
            return self.heads[0](grid[0, 4])
        outputs = [head(grid[0, j + 1]) for j, head in enumerate(self.heads)]
        # Training averages the losses of all four heads; inference uses the deepest one.
        return outputs if self.training else outputs[-1]


ARCHS = {"UNet": UNet, "NestedUNet": NestedUNet, "AttentionUNet": AttentionUNet}


def build_model(arch: str, *, deep_supervision: bool = False, base_width: int = 32,
                align_corners: bool = True, depth: int = 4, bottleneck_dilation: int = 1) -> nn.Module:
    """Construct a model by name; deep supervision exists only for NestedUNet, depth other than 4 and
    a dilated bottleneck only for UNet."""
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if deep_supervision and arch != "NestedUNet":
        raise ValueError(f"--deep-supervision needs --arch NestedUNet, not {arch}")
    if depth != 4 or bottleneck_dilation != 1:
        if arch != "UNet":
            option = f"--depth {depth}" if depth != 4 else f"--bottleneck-dilation {bottleneck_dilation}"
            raise ValueError(f"{option} needs --arch UNet, not {arch}")
        return UNet(base_width=base_width, align_corners=align_corners, depth=depth,
                    bottleneck_dilation=bottleneck_dilation)
    if arch == "NestedUNet":
        return NestedUNet(base_width=base_width, deep_supervision=deep_supervision, align_corners=align_corners)
    return ARCHS[arch](base_width=base_width, align_corners=align_corners)


def encoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of the contracting path (before any decoder sees them)."""
    if isinstance(model, NestedUNet):
        return [model.nodes[f"x{i}_0"] for i in range(5)]
    return list(model.enc)


def freeze_encoder(model: nn.Module) -> None:
    """Fix the encoder's weights and BatchNorm statistics: fine-tuning on a few images then adapts
    only the decoder, and cannot drift the features learned from many."""
    for block in encoder_blocks(model):
        block.requires_grad_(False)
        block.eval()
        block.train = _stay_in_eval.__get__(block)   # model.train() must not switch its BatchNorm back


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """For inference only: each BatchNorm that directly follows a convolution in a Sequential is
    folded into that convolution's weights and bias (the same function up to float rounding), so a
    forward pass skips a full read and write of every normalised feature map. Needs eval mode."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it uses the running statistics)")
    for block in model.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            if isinstance(block[i], nn.Conv2d) and isinstance(block[i + 1], nn.modules.batchnorm._BatchNorm):
                block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                block[i + 1] = nn.Identity()
    return model
