"""Incremental sparse inference for flat convolutional generators (SIGE / DeltaCNN style).

A generator (or a slice of one, such as its body) is converted programmatically into a list of
convolution nodes, each ``[pad] conv`` plus an element-wise epilogue; no sparse twin of any
network is written by hand. One job per module, imports in one direction:

* :mod:`.graph`: the conversion, module tree -> nodes (refuses what it cannot convert);
* :mod:`.dense`: the dense pass over the same modules, with the norms observed or frozen;
* :mod:`.tiles`: tile grids and the padded channels-last buffers, window gather and scatter;
* :mod:`.masks`: change masks spread through the kernels (dilation, receptive fields, reach);
* :mod:`.planning`: the plan per input shape (geometry, dense MACs) and the per-frame
  :class:`Schedule` (active tiles per node, predicted MACs);
* :mod:`.runner`: :class:`SparseRunner` (key frames and sparse updates), :class:`SparseCache`
  and :class:`FrameStats`.

``graph <- dense``; ``graph, tiles, masks <- planning``; everything ``<- runner``. Names with a
leading underscore are shared between these modules only.

Per video the engine keeps a :class:`SparseCache`:

* every node's **input** as a padded channels-last buffer (``rows x cols x C``): the reflected
  or zero border lives in the buffer itself, so a tile at the image border is gathered with
  exactly the pixels the dense pass sees, and nothing is padded per frame;
* the per-channel scale/shift of every normalisation, frozen from the last key frame's
  statistics (InstanceNorm has no statistics of its own to reuse), folded into the weights of
  the convolution in front of it, so a frozen norm costs nothing per frame.

A key frame runs the real modules (the output is the teacher's, bit for bit) and fills the
cache. A following frame:

1. **schedule** (no convolution runs): a difference mask on the input (``threshold``, grown by
   ``dilation``); for every node, the output pixels whose receptive field holds a changed input
   pixel (an exact, separable spread of the mask through the kernel, reflected borders and
   transposed convolutions included; plus the changed block input for a residual add), capped
   by ``reach``, reduced to active output tiles. This gives the frame's MACs before it runs.
2. **run**: the changed input pixels go into the reference (DeltaCNN: nowhere else, so changes
   below the threshold accumulate until they cross it); each node gathers its active windows
   (tile + halo) with one ``index_select`` of whole channels-last rows into an
   ``n x C x (th+2h) x (tw+2h)`` batch, runs one dense ``conv2d`` (or ``conv_transpose2d``) with
   no padding, applies the epilogue on the tiles, and writes them with one ``index_put_`` into
   the next node's buffer (then refreshes that buffer's border pixels if a tile touched them).
   Nothing is copied at full size per layer.

Accuracy knobs: with ``threshold`` 0, ``feature_threshold`` 0 and ``reach=None`` the result equals
the dense pass with the same frozen statistics (float rounding aside). ``reach`` caps how far
recomputation spreads beyond the changed input (SIGE recomputes the same mask at every layer:
``reach=0``); ``feature_threshold`` > 0 accepts a recomputed feature pixel only when it moved by
more than that (DeltaCNN's per-layer rule), pruning what spreads.

Which frames are key (break-even, maximum interval) is the method's business
(:mod:`fastv2v.methods.sparse`); the engine also falls back, per layer, to one whole-image
convolution when more than ``dense_above`` of a layer's tiles are active.
"""

from fastv2v.methods.sparse_engine.dense import run_freezing_norms, run_frozen
from fastv2v.methods.sparse_engine.planning import Schedule
from fastv2v.methods.sparse_engine.runner import ROUNDING_FLOOR  # noqa: F401  (public, not in __all__, as before)
from fastv2v.methods.sparse_engine.runner import FrameStats, SparseCache, SparseRunner

__all__ = ["FrameStats", "Schedule", "SparseCache", "SparseRunner", "run_freezing_norms", "run_frozen"]
