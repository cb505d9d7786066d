"""Cost and quality measurements: MACs (two conventions), parameters, PSNR/SSIM, temporal consistency."""

from fastv2v.metrics.profile import Profile, format_macs, profile

__all__ = ["Profile", "format_macs", "profile"]
