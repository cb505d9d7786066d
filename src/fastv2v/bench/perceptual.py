"""FID and LPIPS columns of the benchmark, from local weight files only.

Without a file the columns are null with the meter's own reason (never downloaded, never
faked). FID over one short clip is a noisy estimate (a few dozen frames against a 2048-d
covariance); it is reported for comparison between methods on the same frames, not as an
absolute figure.
"""

from __future__ import annotations

import os
from typing import Any


class PerceptualColumns:
    """``lpips_vs_teacher`` (mean per frame) and ``fid_vs_gt`` / ``fid_vs_teacher`` for each row."""

    def __init__(
        self,
        fid_weights: str | os.PathLike | None = None,
        lpips_weights: str | os.PathLike | None = None,
        lpips_backbone: str | os.PathLike | None = None,
        lpips_net: str = "alex",
    ):
        from fastv2v.metrics.perceptual import FIDMeter, LPIPSMeter

        self.fid = FIDMeter(fid_weights)
        self.lpips = LPIPSMeter(lpips_weights, net=lpips_net, backbone_path=lpips_backbone)

    def row(self, outs, teacher_outs, targets) -> tuple[dict[str, Any], dict[str, str]]:
        """Values and the reasons for the ones that are null."""
        values: dict[str, Any] = {}
        notes: dict[str, str] = {}
        if self.lpips.available:
            values["lpips_vs_teacher"] = float(self.lpips.distance(outs, teacher_outs).mean())
        else:
            values["lpips_vs_teacher"], notes["lpips_vs_teacher"] = None, self.lpips.reason
        reference, name = (targets, "fid_vs_gt") if targets is not None else (teacher_outs, "fid_vs_teacher")
        if self.fid.available:
            self.fid.reset()
            self.fid.update_real(reference)
            self.fid.update_fake(outs)
            values[name] = self.fid.compute()
        else:
            values[name], notes[name] = None, self.fid.reason
        return values, notes
