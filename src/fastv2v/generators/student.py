"""Fast-Vid2Vid's spatially low-demand student, and a cheap inverted-residual body for it.

**Spatial compression** (Zhuo et al., ECCV 2022, "spatially low-demand generator"): the student
sees the input downsampled by 2 and still returns a full-resolution output. It keeps the
teacher's ResNet layer list, except that the *first* downsampling conv has stride 1, so its head
output is at the teacher's head resolution (H/2) and everything after it (body, tail, the last
transposed conv back to H) runs on the same feature sizes as the teacher. Every weight can
therefore be copied from the teacher (:func:`student_from_teacher`), and with the teacher's own
body the student starts as "the teacher, minus its first full-resolution stages".

**Cheap body** (GAN Compression / Fast-Vid2Vid's student): ``body="inverted"`` replaces the
teacher's res-blocks (most of its MACs) by MobileNetV2 inverted-residual blocks
(:class:`InvertedResidual`: 1x1 expand, 3x3 depthwise, 1x1 project, InstanceNorm, residual)
of ``width`` channels, between one stride-2 conv into ``width`` channels and one transposed conv
back to the teacher's feature channels. Head and tail stay the teacher's (copied); only the
new body starts from scratch.

Layout, for the 2-downsampling ResNet teacher (``C = 2 ngf``; ``model`` is one flat
``nn.Sequential`` so the head / body / tail split works as for the teachers,
:class:`~fastv2v.generators.base.SplitGenerator`):

* head ``model[:5]``: pad, 7x7 conv in->ngf, IN, ReLU, 3x3 conv ngf->C **stride 1**, before its
  norm: C channels at H/2 (the teacher's ``a_t`` resolution, from an H/2 input);
* body: ``body="resnet"``: the teacher's body unchanged (IN, ReLU, stride-2 conv, the res-blocks,
  the first transposed conv, before its norm); ``body="inverted"``: IN, ReLU, 3x3 stride-2 conv
  C->width, IN, ReLU, ``n_blocks`` inverted-residual blocks, 3x3 transposed conv width->C. Both
  end with C channels at H/2, the teacher's ``f_t``: the feature loss compares them through a
  1x1 mapping conv (:func:`feature_mapping`);
* tail: the teacher's tail (IN, ReLU, transposed conv C->ngf to H, IN, ReLU, pad, 7x7 conv, tanh).

**Pruned** (GAN Compression's other way, ``body="pruned"``): the teacher's own layer list with
every width scaled to ``width`` base channels instead of ``ngf`` (``width = ngf / 2`` costs about
a quarter of the body's MACs and 3.6x fewer in all), on the **full-resolution** input: nothing is
halved, so no detail is lost before the network starts. :func:`student_from_teacher` copies the
teacher's strongest channels into it (per layer, the output channels of largest L1 weight norm,
the input channels the previous layer kept; the residual stream keeps one set through every
block), so distillation starts from a pruned teacher rather than from scratch. On the scenes
teacher 250 steps of plain output L1 took it from 14.2 dB to 25.6 dB to the teacher on the
held-out clips, where the inverted-residual student had reached 22.2 dB after 6,500.

**Where the input is downsampled: inside** ``forward``. ``student(x)`` takes the same
full-resolution model input as the teacher (``encode_input`` is the teacher's), so it is a
drop-in replacement wherever a teacher runs (the engine, the benchmark, the distiller), and
:meth:`SpatialStudent.downsample_input` makes the half-resolution input: a 2x2 average for
pictures (exactly bilinear x1/2 with ``align_corners=False``), and for label maps the *mode*
of each 2x2 block (ties go to the top-left pixel's class, i.e. nearest), re-encoded one-hot: a
label map is never blended; pix2pixHD's instance-boundary channel is max-pooled (a boundary in
the block survives). :meth:`SpatialStudent.forward_low` takes an input that is already small.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastv2v.errors import UserError
from fastv2v.generators.base import SplitGenerator
from fastv2v.generators.resnet import norm_layer, resnet_layers, shortcut_split

__all__ = [
    "BODIES",
    "InvertedResidual",
    "SpatialStudent",
    "build_student",
    "feature_mapping",
    "halve_input",
    "student_from_teacher",
]

BODIES = ("resnet", "inverted", "pruned")
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}

#: Default cheap body (see :func:`student_from_teacher`): ``width`` = the teacher's feature
#: channels (2 ngf), 4 blocks of expansion 2. For the shipped scenes teacher (resnet_6blocks,
#: ngf 32, 9 classes) at 128x256: 0.87 G MACs against the teacher's 4.84 G (exact convention),
#: about 2.6x faster on one CPU thread. Expansion 4 costs 1.01 G but a third more time: on the
#: CPU the InstanceNorms of the expanded layers, not the MACs, set the pace of a block.
DEFAULT_EXPANSION = 2
DEFAULT_INVERTED_BLOCKS = 4


def _pad(padding_type: str, amount: int) -> tuple[list[nn.Module], int]:
    if padding_type == "reflect":
        return [nn.ReflectionPad2d(amount)], 0
    if padding_type == "replicate":
        return [nn.ReplicationPad2d(amount)], 0
    if padding_type == "zero":
        return [], amount
    raise ValueError(f"padding_type must be reflect, replicate or zero, not {padding_type!r}")


class InvertedResidual(nn.Module):
    """MobileNetV2 block with InstanceNorm: ``x + project(depthwise(expand(x)))``.

    ``expand``: 1x1 conv ``dim -> dim * expansion``, norm, activation (left out for expansion 1);
    ``depthwise``: padding, 3x3 conv with one filter per channel, norm, activation; ``project``:
    1x1 conv back to ``dim``, norm (no activation: the linear bottleneck). Convs have no bias
    unless ``norm="none"`` (an affine-free InstanceNorm removes a bias anyway).
    """

    def __init__(self, dim: int, expansion: int = DEFAULT_EXPANSION, padding_type: str = "reflect",
                 norm: str = "instance", activation: str = "relu"):  # fmt: skip
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
        make_norm, act = norm_layer(norm), ACTIVATIONS[activation]
        bias = norm == "none"
        hidden = dim * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(dim, hidden, 1, bias=bias), make_norm(hidden), act(True)]
        pad, p = _pad(padding_type, 1)
        layers += pad + [nn.Conv2d(hidden, hidden, 3, padding=p, groups=hidden, bias=bias), make_norm(hidden), act(True)]
        layers += [nn.Conv2d(hidden, dim, 1, bias=bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _inverted_body(channels: int, width: int, n_downsampling: int, n_blocks: int, expansion: int, norm: str,
                   padding_type: str, activation: str, use_bias: bool) -> list[nn.Module]:  # fmt: skip
    """IN, ReLU, (n_downsampling - 1) x [3x3 stride-2 conv, IN, ReLU], blocks, (n_downsampling - 1)
    transposed convs back to ``channels`` at the head resolution (the last one before its norm)."""
    make_norm = norm_layer(norm)
    layers: list[nn.Module] = [make_norm(channels), nn.ReLU(True)]
    cin = channels
    for _ in range(n_downsampling - 1):
        layers += [nn.Conv2d(cin, width, 3, stride=2, padding=1, bias=use_bias), make_norm(width), nn.ReLU(True)]
        cin = width
    layers += [InvertedResidual(width, expansion, padding_type, norm, activation) for _ in range(n_blocks)]
    ups = n_downsampling - 1
    for i in range(ups):
        cout = channels if i == ups - 1 else width
        layers.append(nn.ConvTranspose2d(width, cout, 3, stride=2, padding=1, output_padding=1, bias=use_bias))
        if i < ups - 1:
            layers += [make_norm(cout), nn.ReLU(True)]
    return layers


class SpatialStudent(SplitGenerator):
    """The spatially low-demand student (see the module docstring).

    ``forward(x)`` takes the full-resolution model input (as the teacher's ``encode_input``
    makes it), downsamples it by 2 and returns the full-resolution output;
    ``forward(x, features=True)`` returns ``(output, body output)`` (for the feature loss, in one
    call so that a DistributedDataParallel wrapper sees it). ``head``/``body``/``tail`` are the
    three parts as for the teachers, applied to the half-resolution input.
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 32,
        n_downsampling: int = 2,
        n_blocks: int = 6,
        norm: str = "instance",
        use_dropout: bool = False,
        padding_type: str = "reflect",
        use_bias: bool = True,
        label_nc: int = 0,
        use_instance: bool = False,
        body: str = "inverted",
        width: int | None = None,
        expansion: int = DEFAULT_EXPANSION,
        activation: str = "relu",
        teacher_arch: str | None = None,
        divisor: int = 1,
        temporal_shift: float = 0.0,
        elastic: list[str] | None = None,
    ):
        super().__init__()
        if body not in BODIES:
            raise UserError(f"unknown student body {body!r}; use one of {', '.join(BODIES)}.")
        if n_downsampling < 2:
            raise ValueError("the student needs a teacher with at least 2 downsampling stages")
        if label_nc:
            input_nc = label_nc + int(use_instance)
        channels = 2 * ngf
        pruned = body == "pruned"
        if pruned and not (width and 1 <= width):
            raise UserError("a pruned student needs --width, its base width (the teacher's ngf is the most).")
        width = int(width or (channels if body == "inverted" else 2 ** n_downsampling * ngf))
        if body == "inverted" and (width < 1 or expansion < 1 or n_blocks < 0):
            raise UserError(f"the inverted body needs width >= 1, expansion >= 1 and blocks >= 0, not "
                            f"{width}, {expansion}, {n_blocks}.")  # fmt: skip
        if (divisor != 1 or temporal_shift or elastic) and not pruned:
            raise UserError("input divisors, the temporal shift and elastic sub-networks need --body pruned.")
        if divisor not in (1, 2, 4) or not 0 <= temporal_shift < 1:
            raise UserError(f"a student's input divisor is 1, 2 or 4 and its temporal shift a fraction in [0, 1), "
                            f"not {divisor} and {temporal_shift}.")  # fmt: skip
        self.config: dict[str, Any] = dict(
            arch="student", teacher_arch=teacher_arch, input_nc=input_nc, output_nc=output_nc, ngf=ngf,
            n_downsampling=n_downsampling, n_blocks=n_blocks, norm=norm, use_dropout=use_dropout,
            padding_type=padding_type, use_bias=use_bias, label_nc=label_nc, use_instance=use_instance, body=body,
            width=width, expansion=expansion, activation=activation,
        )  # fmt: skip
        # only when set, so files written before these existed keep their exact configuration
        extra = {"divisor": divisor, "temporal_shift": float(temporal_shift), "elastic": list(elastic or []) or None}
        self.config.update({k: v for k, v in extra.items() if v not in (1, 0.0, None)})
        self.temporal_shift = float(temporal_shift)
        self.input_nc, self.output_nc = input_nc, output_nc
        self.label_nc, self.use_instance = label_nc, use_instance
        self.body_kind = body
        teacher_blocks = n_blocks if body in ("resnet", "pruned") else 0
        layers = resnet_layers(input_nc, output_nc, width if pruned else ngf, n_downsampling, teacher_blocks, norm,
                               use_dropout, padding_type, use_bias)  # fmt: skip
        if not pruned:
            layers[4].stride = (1, 1)  # the first downsampling conv: stride 1 on the half-resolution input
        head_end, body_end = shortcut_split(n_downsampling, teacher_blocks)
        if body == "inverted":
            new_body = _inverted_body(channels, width, n_downsampling, n_blocks, expansion, norm, padding_type,
                                      activation, use_bias)  # fmt: skip
            layers = layers[:head_end] + new_body + layers[body_end:]
            body_end = head_end + len(new_body)
        self.model = nn.Sequential(*layers)
        self.split = (head_end, body_end)
        # the shrunk input must survive the stride-2 stages and come back
        self.scale = divisor if pruned else 2  # how much the input is shrunk before the network
        self.size_multiple = self.scale * 2 ** (n_downsampling - (0 if pruned else 1))

    @property
    def feature_channels(self) -> int:
        """Channels of the body output (what the feature loss maps to the teacher's)."""
        return 2 * int(self.config["width"]) if self.body_kind == "pruned" else 2 * int(self.config["ngf"])

    # -- the input ---------------------------------------------------------------------------

    def check_size(self, height: int, width: int, source: str = "the input") -> None:
        m = self.size_multiple
        if height % m or width % m:
            halves = " halves it and" if self.scale == 2 else ""
            raise UserError(
                f"{source} is {height}x{width} but the student{halves} needs sides that are multiples of {m}; "
                f"pass --size with such a size (e.g. {height // m * m or m}x{width // m * m or m})."
            )

    def downsample_input(self, x: torch.Tensor) -> torch.Tensor:
        """The full-resolution model input at half resolution (2x2 average for pictures; for
        label maps the 2x2 mode, ties to the top-left pixel, one-hot again; instance boundaries
        max-pooled)."""
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            self.check_size(h, w, "the model input")
        for _ in range(self.scale.bit_length() - 1):  # a pruned student at divisor 1 takes it as it is
            x = halve_input(x, self.label_nc)
        return x

    def upsample_output(self, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The output at the input's ``size``: a pruned student on a divided input answers at
        that smaller size and is brought back bilinearly; every other student already is full size."""
        if tuple(y.shape[-2:]) == tuple(size):
            return y
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    # -- running -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, features: bool = False):
        out = self.forward_low(self.downsample_input(x), features)
        if self.scale == 1 or self.body_kind != "pruned":
            return out
        if features:
            return self.upsample_output(out[0], x.shape[-2:]), out[1]
        return self.upsample_output(out, x.shape[-2:])

    def step(self, x: torch.Tensor, past=None):
        """One frame of a video with the temporal shift (:mod:`fastv2v.generators.elastic`):
        ``(output, present)``; ``past`` is the previous call's ``present`` (None at a video's first
        frame). Without a shift ``present`` is empty and the output is ``self(x)``."""
        from fastv2v.generators.elastic import run_layers

        if not self.temporal_shift:
            return self(x), ()
        out = run_layers(self, x, divisor=self.scale, past=past)
        return out.y, out.present

    def forward_low(self, x_low: torch.Tensor, features: bool = False):
        """The student on an input that is already at half resolution."""
        if not features:
            return self.model(x_low)
        f = self.body(self.head(x_low))
        return self.tail(f), f


def halve_input(x: torch.Tensor, label_nc: int = 0) -> torch.Tensor:
    """A model input ``N x C x H x W`` at half resolution: the 2x2 average for pictures
    (``label_nc`` 0); for label maps (one-hot in the first ``label_nc`` channels) the 2x2 mode,
    ties to the top-left pixel, one-hot again, so a label map is never blended; channels past
    ``label_nc`` (pix2pixHD's instance boundaries) max-pooled, so a boundary in the block survives."""
    if label_nc == 0:
        return F.avg_pool2d(x, 2)
    one_hot = x[:, :label_nc]
    score = F.avg_pool2d(one_hot, 2) * 4 + 0.5 * one_hot[:, :, ::2, ::2]
    low = torch.zeros_like(score).scatter_(1, score.argmax(1, keepdim=True), 1.0)
    if x.shape[1] > label_nc:
        low = torch.cat([low, F.max_pool2d(x[:, label_nc:], 2)], dim=1)
    return low


def build_student(config: dict[str, Any]) -> SpatialStudent:
    """A student from its stored ``config`` (``arch`` ignored)."""
    import inspect

    names = set(inspect.signature(SpatialStudent.__init__).parameters) - {"self"}
    return SpatialStudent(**{k: v for k, v in config.items() if k in names})


def student_from_teacher(
    teacher: SplitGenerator,
    body: str = "inverted",
    width: int | None = None,
    expansion: int = DEFAULT_EXPANSION,
    blocks: int | None = None,
    activation: str = "relu",
    temporal_shift: float = 0.0,
    elastic: list[str] | None = None,
) -> SpatialStudent:
    """A student for ``teacher``, its weights copied from the teacher wherever the layer exists
    in both: head (the stride-1 conv keeps the teacher's kernel) and tail always, the body too
    for ``body="resnet"``. ``body="inverted"``: ``width`` channels (default: the teacher's feature
    channels, 2 ngf; half its bottleneck width), ``blocks`` (default 4) inverted-residual blocks
    with ``expansion`` (default 2); its layers start from PyTorch's default initialisation.
    """
    cfg = teacher.config
    arch = cfg.get("arch", "")
    if not arch.startswith("resnet_") and arch != "global":
        raise UserError(f"a spatial student is made from a ResNet or pix2pixHD global teacher, not {arch!r}.")
    n_down = int(cfg.get("n_downsampling", 2))
    first = teacher.model[1]
    if body in ("resnet", "pruned"):
        blocks = int(cfg["n_blocks"])
    else:
        blocks = DEFAULT_INVERTED_BLOCKS if blocks is None else int(blocks)
    student = SpatialStudent(
        input_nc=teacher.input_nc, output_nc=teacher.output_nc, ngf=int(cfg["ngf"]), n_downsampling=n_down,
        n_blocks=blocks, norm=cfg.get("norm", "instance"), use_dropout=bool(cfg.get("use_dropout", False)),
        padding_type=cfg.get("padding_type", "reflect"), use_bias=first.bias is not None,
        label_nc=teacher.label_nc, use_instance=bool(getattr(teacher, "use_instance", False)), body=body,
        width=width, expansion=expansion, activation=activation, teacher_arch=arch, temporal_shift=temporal_shift,
        elastic=elastic,
    )  # fmt: skip
    if body == "pruned":
        prune_from(teacher, student)
        p = next(teacher.parameters(), None)
        return student.to(p.device if p is not None else "cpu").train(teacher.training)
    parts = [("head", student.head, teacher.head), ("tail", student.tail, teacher.tail)]
    if body == "resnet":
        parts.append(("body", student.body, teacher.body))
    with torch.no_grad():
        for name, ours, theirs in parts:
            mine, source = list(ours), list(theirs)  # sliced Sequentials keep the full model's indices
            try:
                if len(mine) != len(source):
                    raise RuntimeError(f"{len(mine)} layers against the teacher's {len(source)}")
                for a, b in zip(mine, source):
                    a.load_state_dict(b.state_dict(), strict=True)
            except RuntimeError as exc:  # not a layout this student mirrors
                raise UserError(f"cannot initialise the student's {name} from this teacher "
                                f"({str(exc).strip().splitlines()[0]}).") from None  # fmt: skip
    p = next(teacher.parameters(), None)
    return student.to(p.device if p is not None else "cpu").train(teacher.training)


@torch.no_grad()
def prune_from(teacher: SplitGenerator, student: SpatialStudent) -> None:
    """Copy ``teacher``'s strongest channels into the narrower ``student`` of the same layer list.

    Walking the flat ``model`` in order: each convolution keeps the input channels the previous
    one kept and the output channels of largest L1 weight norm (a transposed convolution's
    weight is ``in x out``); every residual block reads and writes the stream channels chosen by
    the last downsampling conv, its inner conv chooses its own. The final conv keeps all outputs.
    """
    kept = torch.arange(teacher.input_nc)
    for ours, theirs in zip(student.model, teacher.model):
        if isinstance(theirs, nn.Conv2d | nn.ConvTranspose2d) and not hasattr(theirs, "conv_block"):
            kept = _copy_strongest(theirs, ours, kept)
        elif hasattr(theirs, "conv_block"):  # a residual block: the stream keeps its channels
            inner = _copy_strongest(theirs.conv_block[_conv_index(theirs, 0)], ours.conv_block[_conv_index(ours, 0)], kept)
            _copy_strongest(theirs.conv_block[_conv_index(theirs, 1)], ours.conv_block[_conv_index(ours, 1)], inner,
                            keep_out=kept)  # fmt: skip


def _conv_index(block: nn.Module, which: int) -> int:
    return [i for i, m in enumerate(block.conv_block) if isinstance(m, nn.Conv2d)][which]


def _copy_strongest(theirs: nn.Module, ours: nn.Module, kept_in: torch.Tensor,
                    keep_out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Copy the ``kept_in`` x strongest-outputs slice of ``theirs`` into ``ours``; the outputs kept."""
    transposed = isinstance(theirs, nn.ConvTranspose2d)
    w = theirs.weight.transpose(0, 1) if transposed else theirs.weight  # (out, in, k, k)
    w = w[:, kept_in]
    n_out = ours.weight.shape[1] if transposed else ours.weight.shape[0]
    if keep_out is None:
        keep_out = torch.sort(torch.topk(w.abs().flatten(1).sum(1), n_out).indices).values
    w = w[keep_out]
    ours.weight.copy_(w.transpose(0, 1) if transposed else w)
    if theirs.bias is not None:
        ours.bias.copy_(theirs.bias[keep_out])
    return keep_out


def feature_mapping(student_channels: int, teacher_channels: int) -> nn.Conv2d:
    """1x1 conv from the student's body output to the teacher's (GAN Compression's mapping
    layer, for the feature loss only; not part of the exported student). Starts as the identity
    when the channel counts agree."""
    conv = nn.Conv2d(student_channels, teacher_channels, 1)
    if student_channels == teacher_channels:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(teacher_channels).view(teacher_channels, teacher_channels, 1, 1))
            conv.bias.zero_()
    return conv
