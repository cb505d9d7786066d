"""The ``fastv2v`` command: one entry point, one sub-command per job.

Each sub-command parses its flags and calls library code; a :class:`UserError` becomes one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastv2v.errors import UserError


def _size(text: str) -> tuple[int, int]:
    from fastv2v.data.resize import parse_size

    try:
        return parse_size(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint: a fastv2v .safetensors or an upstream .pth")
    p.add_argument("--arch", help="architecture of an upstream .pth (resnet_6blocks, resnet_9blocks, global); "
                   "inferred from the tensors when omitted")  # fmt: skip
    p.add_argument("--label-nc", type=int, default=None, help="label classes, for a label-map generator")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="compute precision via autocast; bf16 roughly halves CPU time on AVX-512 BF16 processors")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="frames per model call, for throughput (default 1)")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="model resolution (default: the input's)")
    p.add_argument("--resize", default="pad", choices=["pad", "crop", "stretch"],
                   help="how --size keeps the aspect ratio (default pad)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_translate(args: argparse.Namespace) -> int:
    from fastv2v.engine.translate import translate
    from fastv2v.generators import load_generator

    config = {} if args.label_nc is None else {"label_nc": args.label_nc}
    generator = load_generator(args.model, arch=args.arch, **config)
    report = translate(
        generator, args.input, args.output, device=args.device, dtype=args.dtype, batch=args.batch,
        size=args.size, resize_mode=args.resize, progress=not args.quiet,
    )  # fmt: skip
    print(report.summary())
    if report.frames_lost:
        raise UserError(
            f"{args.input} is truncated: {report.frames_lost} frames could not be decoded after frame "
            f"{report.frames} (the {report.frames} that decoded are in {args.output}); re-encode or re-copy the file."
        )
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from fastv2v.generators import build_generator, load_generator
    from fastv2v.metrics.profile import profile

    if args.model:
        generator = load_generator(args.model, arch=args.arch)
    else:
        config = {"ngf": args.ngf, "input_nc": args.input_nc, "output_nc": args.output_nc}
        if args.label_nc:
            config["label_nc"] = args.label_nc
        generator = build_generator(args.arch or "resnet_9blocks", **config)
    h, w = args.size
    generator.check_size(h, w, source=f"--size {h}x{w}")
    x = torch.zeros(1, generator.input_nc, h, w, device="meta")  # count only, compute nothing
    result = profile(generator, x)
    name = generator.config["arch"]
    print(f"{name} (ngf {generator.config['ngf']}, {generator.input_nc}->{generator.output_nc} channels) at {h}x{w}")
    print(f"parameters: {result.params / 1e6:.2f} M")
    print(f"MACs per frame: {_g(result.macs_exact)} exact, {_g(result.macs_paper)} paper")
    print("  exact: true multiply-adds; paper: transposed convs counted at output size (thop/torchprofile, published tables)")
    return 0


def _g(macs: int) -> str:
    """G-MACs with at most two decimals, as the papers print them (56.8 G, 49.55 G)."""
    return f"{macs / 1e9:.2f}".rstrip("0").rstrip(".") + " G"


def cmd_demo(args: argparse.Namespace) -> int:
    from fastv2v.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fastv2v import __version__

    parser = argparse.ArgumentParser(
        prog="fastv2v",
        description="Fast video-to-video translation: run an image-to-image generator on video, "
        "and distil it into faster video models.",
    )
    parser.add_argument("--version", action="version", version=f"fastv2v {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="translate a built-in clip and write a side-by-side video and a report")
    p.add_argument("--out", default="fastv2v-demo", help="output folder (default ./fastv2v-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("translate", help="translate a video, image folder or image with a model")
    p.add_argument("input", help="video file (mp4, mov, mkv, avi, webm), folder of images, or image")
    p.add_argument("output", help="output: .mp4/.mov/.mkv video, a folder (lossless PNG frames) or an image")
    _add_model_options(p)
    _add_runtime_options(p)
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("profile", help="parameters and MACs per frame, in both MAC conventions")
    p.add_argument("--arch", default=None, help="architecture to build (default resnet_9blocks)")
    p.add_argument("--model", default=None, help="profile this checkpoint instead of a fresh --arch")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW", help="frame size (default 256x256)")
    p.add_argument("--ngf", type=int, default=64, help="base width of a fresh --arch (default 64)")
    p.add_argument("--input-nc", type=int, default=3, help="input channels of a fresh --arch (default 3)")
    p.add_argument("--output-nc", type=int, default=3, help="output channels of a fresh --arch (default 3)")
    p.add_argument("--label-nc", type=int, default=0, help="label classes of a fresh label-map --arch")
    p.set_defaults(func=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"fastv2v: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fastv2v: interrupted; no partial output was left at the requested path.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
