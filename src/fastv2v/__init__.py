"""fastv2v: fast video-to-video translation from a per-frame image-to-image teacher."""

__version__ = "0.1.0"

from fastv2v.errors import UserError  # noqa: E402

__all__ = ["Pipeline", "UserError", "__version__", "drive", "load_generator", "load_model"]


def __getattr__(name):  # lazy: keep `import fastv2v` cheap for the CLI's --help
    if name == "load_generator":
        from fastv2v.generators import load_generator

        return load_generator
    if name == "load_model":
        from fastv2v.models import load_model

        return load_model
    if name == "Pipeline":
        from fastv2v.pipeline import Pipeline

        return Pipeline
    if name == "drive":
        from fastv2v.engine.loop import drive

        return drive
    raise AttributeError(name)
