"""Shortcut-V2V (Chung et al., ICCV 2023), one part per module, imports in one direction:

* :mod:`.deform`: the fast deformable convolution the block is built on;
* :mod:`.block`: :class:`ShortcutBlock` (official key names, efficient inference form);
* :mod:`.model_file`: the self-describing model file (teacher + block + method settings);
* :mod:`.method`: the online methods ``shortcut`` and ``shortcut_auto`` (registered on import);
* :mod:`.official`: import of checkpoints trained with the official code.

``deform <- block <- model_file <- method``; ``official`` uses ``block`` and ``model_file``.
"""

from fastv2v.methods.shortcut.block import HetConv, OffsetGenerator, ShortcutBlock
from fastv2v.methods.shortcut.method import ShortcutAuto, ShortcutMethod
from fastv2v.methods.shortcut.model_file import ShortcutModel, load_shortcut, save_shortcut

__all__ = [
    "HetConv", "OffsetGenerator", "ShortcutAuto", "ShortcutBlock", "ShortcutMethod", "ShortcutModel",
    "load_shortcut", "save_shortcut",
]
