"""Methods: what stands in for the teacher on a non-key frame. Importing this package registers
every method under its ``bench.json`` name in :data:`fastv2v.methods.base.METHODS`."""

from fastv2v.methods import shortcut, sparse  # noqa: F401  (register "shortcut" and "sparse")
from fastv2v.methods import interpolate  # noqa: F401  (register "interp" and "minterpolate")
from fastv2v.methods import student  # noqa: F401  (register "spatial" and "fast", Fast-Vid2Vid)
from fastv2v.methods.base import METHODS, OnlineMethod, register, run_online

__all__ = ["METHODS", "OnlineMethod", "register", "run_online"]
