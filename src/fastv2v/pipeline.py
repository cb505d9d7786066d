"""The one assembler: a model file (or a loaded model) plus a method name and settings become a
ready-to-run :class:`Pipeline`.

Every command builds what it runs here (``translate``, ``bench``, ``demo``, the many-video
engine, the ``tools/ship_*`` scripts), so a setting a model file stores (key-frame interval,
the calibrated reuse gate, ...) is applied the same way everywhere. Settings are layered:

1. the method class's defaults (``from_model``'s keyword defaults);
2. the settings the model file stores for its own kind of method (``{"method": {...}}`` in the
   file's metadata: :func:`fastv2v.bundle.method_settings`);
3. the caller's overrides (command-line options or keywords); None means "not given".

An override the method does not take is refused with one sentence (``--method spatial`` takes
no ``--interval``); stored settings of another method are simply not used by this one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastv2v.errors import UserError
from fastv2v.generators import teacher_of
from fastv2v.generators.base import SplitGenerator

#: Command-line spelling of each setting, for messages.
_OPTION = {"interval": "--interval", "max_interval": "--max-interval", "keyframes": "--keyframes",
           "threshold": "--threshold", "reuse_below": "--reuse-below", "kernels": "--kernels",
           "start": "--start", "subnet": "--subnet", "budget": "--budget"}  # fmt: skip


def registry() -> dict[str, type]:
    """Every registered method class by name (importing the methods registers them)."""
    import fastv2v.methods  # noqa: F401  (registers every method module)
    from fastv2v.methods.base import METHODS

    return METHODS


def method_names() -> list[str]:
    return sorted(registry())


def method_class(name: str) -> type:
    methods = registry()
    if name not in methods:
        raise UserError(f"unknown method {name!r}; the registered methods are: {', '.join(sorted(methods))}.")
    return methods[name]


def takes(name: str, setting: str) -> bool:
    """Whether the method has the setting (e.g. ``kernels``), for options that apply to some."""
    return setting in getattr(method_class(name), "SETTINGS", ())


def needs_trained_part(name: str) -> bool:
    """Whether the method needs a model file's trained part (a Shortcut block, a student)."""
    return getattr(method_class(name), "model_kind", None) is not None


def is_sequential(model: Any) -> bool:
    """Whether a loaded model is a sequential teacher (vid2vid): each output depends on its own
    previous outputs, so only the methods of :data:`fastv2v.methods.vid2vid.SEQUENTIAL` run it."""
    from fastv2v.generators.vid2vid import Vid2VidGenerator

    return isinstance(model, Vid2VidGenerator)


def uses_interval(name: str) -> bool:
    """Whether the method has a key-frame interval to sweep (the teacher and ``spatial`` do not)."""
    return bool(getattr(method_class(name), "uses_interval", True))


@dataclass
class Pipeline:
    """A teacher (it encodes inputs, decodes outputs, and is what outputs are judged against),
    the method that stands in for it, and where they came from.

    ``kind``: the model file's kind (``generator``, ``shortcut``, ``student``); ``label``: a
    short name for reports; ``path``: the file (None: built from a model in memory).
    """

    teacher: Any  # a SplitGenerator, or a sequential Vid2VidGenerator
    method: Any
    kind: str = "generator"
    label: str = "model"
    path: Path | None = None
    model: Any = None  # what was loaded: the generator, or the bundle with its trained part
    dtype: str | None = None  # the precision the file's own method was tuned at (``--dtype auto`` runs it)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def settings(self) -> dict[str, Any]:
        """The method's settings as resolved (what ``from_file`` with them would rebuild)."""
        return dict(self.method.settings())

    @property
    def latency(self) -> int:
        """Frames a buffered method holds back before their output is ready (0: online)."""
        return int(getattr(self.method, "latency", 0) or 0)

    @property
    def size_multiple(self) -> int:
        """What frame sides must be multiples of: the teacher's, or more for a student that
        shrinks its input (an elastic sub-network on the half input)."""
        run = getattr(self.method, "run", None)
        student = getattr(run, "student", None)
        return max(int(self.teacher.size_multiple), int(getattr(student, "size_multiple", 1)))

    @property
    def min_frames(self) -> int:
        return int(getattr(self.method, "min_frames", 1) or 1)

    def describe(self) -> str:
        shown = {k: v for k, v in self.settings.items() if v is not None}
        text = ", ".join(f"{k} {v}" for k, v in shown.items())
        return f"{self.name}" + (f" ({text})" if text else "") + f" on {self.label}"

    def to(self, device: torch.device | str) -> "Pipeline":
        self.teacher.to(device).eval()
        for value in vars(self.method).values():
            if isinstance(value, torch.nn.Module):
                value.to(device).eval()
        return self

    # -- assembling ------------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, method: str | None = None, *, device: str | torch.device = "cpu",
        arch: str | None = None, label_nc: int | None = None, teacher: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> "Pipeline":
        """The pipeline a model file describes, with ``method`` (None: the file's own default:
        ``shortcut`` for a Shortcut-V2V file, ``fast`` for a student file, ``teacher`` for a
        generator) and ``overrides`` on top of the file's settings. ``arch`` / ``label_nc``:
        for upstream generator files; ``teacher``: a teacher file that a bundle must have been
        distilled from (refused otherwise)."""
        from fastv2v.models import load_model

        path = Path(path)
        config = {} if label_nc is None else {"label_nc": label_nc}
        model = load_model(path, device=device, arch=arch, **config)
        if teacher is not None:
            _check_teacher(model, teacher, path)
        stored = _stored_method(path) if teacher_of(model) is model else None
        return cls.from_model(model, method, label=path.name, path=path, stored=stored, **overrides)

    @classmethod
    def from_model(
        cls, model: Any, method: str | None = None, *, label: str | None = None, path: Path | None = None,
        stored: dict | None = None, **overrides: Any,
    ) -> "Pipeline":
        """The pipeline for a loaded model: a :class:`SplitGenerator`, a sequential vid2vid
        generator (the methods of :data:`fastv2v.methods.vid2vid.SEQUENTIAL`) or a bundle (its
        ``.teacher`` plus a trained part and stored ``.method`` settings). ``stored``: the method
        settings a plain generator file carries (what ``fastv2v tune`` chose for it)."""
        generator = teacher_of(model)
        plain = generator is model
        kind = "generator" if plain else model.kind
        stored = dict((stored if plain else model.method) or {})
        own = stored.pop("name", None)
        tuned_dtype = stored.pop("dtype", None)
        name = method or own or "teacher"
        cls_ = method_class(name)
        if is_sequential(generator):
            cls_ = _sequential_class(name, label or _label(generator))
        needs = getattr(cls_, "model_kind", None)
        if needs is not None and needs != kind:
            what = f"a {kind} model file" if kind != "generator" else "a plain generator"
            raise UserError(f"--method {name} needs a trained {needs} model file (made by `fastv2v distill {needs}`), "
                            f"and {label or 'the model'} is {what}; pass that file with --model.")  # fmt: skip
        accepted = tuple(getattr(cls_, "SETTINGS", ()))
        given = {k: v for k, v in overrides.items() if v is not None}
        refused = [k for k in given if k not in accepted]
        if refused == ["start"]:
            raise UserError(f"--start applies to vid2vid (sequential) models only; {label or 'the model'} is not one.")
        if refused:
            takes = ", ".join(_OPTION.get(k, k) for k in accepted)
            takes = f"it takes {takes} only" if takes else "it takes no settings"
            raise UserError(f"{_OPTION.get(refused[0], refused[0])} does not apply to --method {name} ({takes}).")
        # the file's settings apply to the method it names, and to the other methods of its kind
        applies = name == own or (needs is not None and needs == kind)
        settings = {k: v for k, v in stored.items() if k in accepted} if applies else {}
        settings.update(given)
        built = cls_.from_model(model, **settings)
        return cls(generator.eval(), built, kind=kind, label=label or _label(generator), path=path, model=model,
                   dtype=tuned_dtype if name == own else None)  # fmt: skip

    def save(self, path: str | os.PathLike) -> Path:
        """Write this pipeline as one self-describing model file (the teacher, any trained part,
        and this method with its settings as the file's own), so ``fastv2v translate --model``
        runs exactly this pipeline."""
        import copy

        path = Path(path)
        method = {"name": self.name, **self.settings, **({"dtype": self.dtype} if self.dtype else {})}
        if self.kind == "generator":
            from fastv2v.generators import save_generator

            save_generator(path, self.teacher, method=method)
        else:
            model = copy.copy(self.model)  # the same modules, another method
            model.method = method
            if self.kind == "shortcut":
                from fastv2v.methods.shortcut.model_file import save_shortcut as save
            else:
                from fastv2v.methods.student_model import save_student as save
            save(path, model)
        return path

    @classmethod
    def untrained(cls, generator: SplitGenerator, method: str, **kwargs: Any) -> "Pipeline":
        """``method`` on ``generator`` with freshly initialised trained parts (an untrained
        Shortcut block sized by ``hidden``, a student initialised from the teacher): for cost
        profiles, which do not depend on the weights; its outputs mean nothing."""
        return cls(generator.eval(), method_class(method)(generator, **kwargs), label=_label(generator))


def _sequential_class(name: str, label: str) -> type:
    """The class running ``name`` on a sequential teacher, or one sentence saying which do."""
    from fastv2v.methods.vid2vid import SEQUENTIAL

    if name not in SEQUENTIAL:
        *names, last = SEQUENTIAL
        methods = f"{', '.join(names)} or {last}" if names else last
        raise UserError(f"--method {name} needs a per-frame generator, and {label} is a vid2vid generator (each "
                        f"frame depends on its previous outputs); use --method {methods} for now.")  # fmt: skip
    return SEQUENTIAL[name]


def _stored_method(path: Path) -> dict | None:
    """The method settings a plain generator file stores (written by :meth:`Pipeline.save`)."""
    if path.suffix != ".safetensors":
        return None
    from fastv2v.checkpoint import read_config

    method = (read_config(path) or {}).get("method")
    return dict(method) if isinstance(method, dict) else None


def _label(generator: SplitGenerator) -> str:
    return f"{generator.config.get('arch', type(generator).__name__)} (in memory)"


def _check_teacher(model: Any, teacher: str | os.PathLike, source: Path) -> None:
    from fastv2v.bundle import check_teacher
    from fastv2v.generators import load_generator

    if isinstance(model, SplitGenerator):
        raise UserError(f"--teacher checks a distilled model file against its teacher, and {source} is a plain "
                        "generator; drop --teacher.")  # fmt: skip
    part = "block" if model.kind == "shortcut" else "student"
    check_teacher(model.teacher, load_generator(teacher), source, part)
