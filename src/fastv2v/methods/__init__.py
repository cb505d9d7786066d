"""Methods: what stands in for the teacher on a non-key frame. The protocol every method speaks
is documented in :mod:`fastv2v.methods.base`. Importing this package registers every method under
its ``bench.json`` name in :data:`fastv2v.methods.base.METHODS`; commands build methods through
:mod:`fastv2v.pipeline`, never directly."""

from fastv2v.methods import shortcut, sparse  # noqa: F401  (register "shortcut" and "sparse")
from fastv2v.methods import interpolate  # noqa: F401  (register "interp" and "minterpolate")
from fastv2v.methods import student  # noqa: F401  (register "spatial" and "fast", Fast-Vid2Vid)
from fastv2v.methods.base import METHODS, OnlineMethod, register

__all__ = ["METHODS", "OnlineMethod", "register"]
