"""FID and LPIPS from weights files the user supplies; nothing is ever downloaded.

Both metrics need pretrained networks. fastv2v does not fetch them: pass local files, or the
meter reports itself unavailable (``available=False``, ``reason`` says what to pass) and its
results are ``None``, never a made-up number.

**FID** (:class:`FIDMeter`): torchvision's Inception-v3 architecture, pool3 (2048-d) features
of frames resized to 299x299 (bilinear) and scaled to [-1, 1], Fréchet distance of the two
Gaussians. Accepted weights files (``.pth``/``.pt`` state dict or ``.safetensors``):

* torchvision's ``inception_v3_google-0cc3c7bd.pth`` (1000 classes): torchvision's Inception.
* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (1008 classes): the TensorFlow FID
  Inception port. Detected from the 1008-way ``fc``; its pooling quirks are reproduced
  (average pools ignore padding, max pool in the last block), which is what makes FID values
  comparable with published numbers. Values from the torchvision weights are not.

**LPIPS** (:class:`LPIPSMeter`, Zhang et al. 2018, version 0.1): AlexNet or VGG16 features
from torchvision's architecture, unit-normalised per layer, squared differences weighted by
the learned 1x1 "linear heads", spatially averaged and summed over five layers. Expected
files (any combination, given as ``weights_path`` and optionally ``backbone_path``):

* the backbone: torchvision's ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` (keys
  ``features.N.weight``/``bias``; ``classifier.*`` is ignored), or a state dict of the lpips
  package's whole ``LPIPS`` module (keys ``net.sliceK.N.*``);
* the heads: the lpips package's ``lpips/weights/v0.1/alex.pth`` / ``vgg.pth`` (keys
  ``lin0.model.1.weight`` .. ``lin4.model.1.weight``, shapes ``(1, C_l, 1, 1)``).

A file holding both (e.g. the lpips module's state dict, or the two merged) is enough on its
own. Without heads the unlearned "baseline" variant (all weights 1) is computed and
:attr:`LPIPSMeter.variant` says so. A missing, unreadable or mismatching file raises
:class:`~fastv2v.errors.UserError` naming it.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastv2v.errors import UserError

__all__ = ["FIDMeter", "FeatureStats", "LPIPSMeter", "frechet_distance", "frechet_from_factor", "load_state_dict"]


# --------------------------------------------------------------------------------------------
# shared helpers


def load_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` dict from a local ``.pth``/``.pt``/``.safetensors`` file.

    Unwraps ``{"state_dict": ...}`` checkpoints and DataParallel ``module.`` prefixes. Loads
    with ``weights_only=True`` (no code execution from pickles). ``what`` names the expected
    content in error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the path of a local {what} weights file (nothing is downloaded).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(_unreadable(path, what, exc)) from None
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} is not a state dict of tensors; pass a {what} weights file.")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def _unreadable(path: Path, what: str, exc: Exception) -> str:
    """One sentence for a weights file that does not load. torch's own refusal runs to three
    paragraphs and suggests ``weights_only=False``, which would run the pickle's code: never."""
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
        return (f"{path} is not a plain weights file torch can load safely (weights_only): it holds pickled "
                f"objects besides tensors or is not a checkpoint at all; pass a {what} state dict of tensors.")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{path} could not be read as a {what} weights file ({first}); check the file."


def _frames_to_tensor(frames, device) -> torch.Tensor:
    """uint8 frames (``HxWx3``, ``NxHxWx3`` or an iterable of ``HxWx3``) as ``N,3,H,W`` float in [0,1]."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = frames[None]
    arr = np.stack([np.asarray(f) for f in frames]) if not isinstance(frames, np.ndarray) else frames
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB frames of shape HxWx3 or NxHxWx3, got {arr.shape}")
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=torch.float32)
    return t.permute(0, 3, 1, 2) / scale


def _batches(frames, batch_size: int):
    """Yield lists / array slices of at most ``batch_size`` frames from any frame source."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            frames = frames[None]
        for i in range(0, len(frames), batch_size):
            yield frames[i : i + batch_size]
        return
    buf = []
    for f in frames:
        buf.append(f)
        if len(buf) == batch_size:
            yield buf
            buf = []
    if buf:
        yield buf


# --------------------------------------------------------------------------------------------
# FID


def frechet_distance(mu1, sigma1, mu2, sigma2, *, method: str = "sqrtm", eps: float = 1e-6) -> float:
    """Fréchet distance ``|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians.

    ``method="sqrtm"`` is the reference computation (``scipy.linalg.sqrtm`` as in the TTUR /
    pytorch-fid code, with its eps-offset retry for singular products); ``method="eigh"``
    uses ``tr (S1 S2)^(1/2) = sum sqrt(eig(B^T S2 B))`` with ``S1 = B B^T``: the same value
    from symmetric eigendecompositions, about 10x faster at 2048-d (more when there are
    fewer samples than dimensions) and free of complex round-off.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError("means and covariances have inconsistent shapes")
    diff = mu1 - mu2
    if method == "sqrtm":
        from scipy import linalg

        import warnings

        with warnings.catch_warnings():  # singular products are handled below, as in pytorch-fid
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"sqrtm gave a large imaginary component ({np.abs(covmean.imag).max():.3g})")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    elif method == "eigh":
        w, v = np.linalg.eigh(sigma1)
        # Directions where S1 is numerically zero add nothing to the trace; dropping them
        # turns the second eigenproblem into an r x r one (r = rank, < n samples).
        keep = w > w.max(initial=0.0) * w.size * np.finfo(np.float64).eps
        b = v[:, keep] * np.sqrt(w[keep])  # S1 = b b^T, so eig(S1 S2) = eig(b^T S2 b)
        ev = np.linalg.eigvalsh(b.T @ sigma2 @ b) if b.shape[1] else np.zeros(0)
        tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    else:
        raise ValueError(f"unknown method {method!r}; choose 'sqrtm' or 'eigh'")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


class FeatureStats:
    """Streaming mean and (unbiased) covariance of feature vectors, in float64.

    Up to ``dim`` vectors are kept as they are (a short clip: exact centred covariance and a
    low-rank factor for :func:`frechet_from_factor`); beyond that only the sum and the sum of
    outer products are kept. Either way memory stays below ``dim x dim`` doubles (32 MiB at
    2048), so a video of any length is summarised without keeping its features.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self._rows: list[np.ndarray] | None = []
        self._sum = np.zeros(dim)
        self._outer: np.ndarray | None = None

    def update(self, feats: np.ndarray) -> None:
        f = np.asarray(feats, dtype=np.float64).reshape(-1, self.dim)
        self.n += f.shape[0]
        self._sum += f.sum(axis=0)
        if self._rows is not None:
            self._rows.append(f)
            if self.n <= self.dim:
                return
            f = np.concatenate(self._rows)  # too many to keep: switch to running sums
            self._rows = None
            self._outer = np.zeros((self.dim, self.dim))
        self._outer += f.T @ f

    def _check(self) -> None:
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 frames per set, got {self.n}")

    def factor(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mu, B)`` with covariance ``B @ B.T`` (``B`` is ``dim x n``), or None once summed."""
        self._check()
        if self._rows is None:
            return None
        x = np.concatenate(self._rows)
        mu = x.mean(axis=0)
        return mu, (x - mu).T / np.sqrt(self.n - 1)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        fac = self.factor()
        if fac is not None:
            mu, b = fac
            return mu, b @ b.T
        mu = self._sum / self.n
        cov = (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (cov + cov.T) / 2


def frechet_from_factor(mu1, b1, mu2, sigma2=None, b2=None) -> float:
    """Fréchet distance when ``S1 = b1 b1^T`` is known by a (``d x r``) factor.

    ``tr (S1 S2)^(1/2) = sum sqrt(eig(b1^T S2 b1))``, an ``r x r`` problem: exact, and for
    sets smaller than the feature dimension (short clips) far cheaper than any ``d x d``
    decomposition. Give ``S2`` as ``sigma2`` or by its own factor ``b2``.
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    if b2 is not None:
        c = b1.T @ b2
        m, tr2 = c @ c.T, float((b2 * b2).sum())
    else:
        m, tr2 = b1.T @ sigma2 @ b1, float(np.trace(sigma2))
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    return float(diff @ diff + (b1 * b1).sum() + tr2 - 2.0 * tr_covmean)


def _pool_branch(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _tf_forward_a(self, x, pool="avg"):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_pool_branch(x, pool))], 1)


def _tf_forward_c(self, x, pool="avg"):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for i in range(1, 6):
        d = getattr(self, f"branch7x7dbl_{i}")(d)
    return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_pool_branch(x, pool))], 1)


def _tf_forward_e(self, x, pool="avg"):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
    return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(_pool_branch(x, pool))], 1)


def _patch_tf_inception(model) -> None:
    """Give torchvision's Inception the TensorFlow FID graph's pooling (pytorch-fid's blocks).

    TF's average pools exclude padding from the mean, and its last mixed block max-pools;
    parameters are unchanged, so the pytorch-fid state dict loads into the same modules.
    """
    import types

    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        m = getattr(model, name)
        m.forward = types.MethodType(_tf_forward_a, m)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        m = getattr(model, name)
        m.forward = types.MethodType(_tf_forward_c, m)
    model.Mixed_7b.forward = types.MethodType(_tf_forward_e, model.Mixed_7b)
    model.Mixed_7c.forward = types.MethodType(lambda self, x: _tf_forward_e(self, x, "max"), model.Mixed_7c)


class FIDMeter:
    """Fréchet Inception Distance between a set of real frames and a set of generated frames.

    ``FIDMeter(path)``; ``update_real(frames)`` / ``update_fake(frames)`` with uint8 ``HxWx3``
    frames (an array ``NxHxWx3`` or any iterable, streamed in batches); ``compute()`` gives
    the FID, or None when no weights file was given (``available`` is False and ``reason``
    says why). ``variant`` is "pytorch-fid" or "torchvision" (see the module docstring: only
    the former compares with published numbers). ``variant="auto"`` detects it from the file.
    ``image_size`` other than 299 departs from the protocol (tests use it for speed).
    ``method`` is passed to :func:`frechet_distance`: "eigh" (default: the same value as the
    reference computation to ~1e-7 relative, well under a second, computed from the features
    themselves via :func:`frechet_from_factor` for sets of at most 2048 frames, where the
    covariance is singular and sqrtm is least accurate) or "sqrtm" (pytorch-fid's
    computation, ~10 s at 2048-d).
    """

    dim = 2048

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        image_size: int = 299,
        variant: str = "auto",
        method: str = "eigh",
    ) -> None:
        self.weights_path = None if weights_path is None else Path(weights_path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.image_size = image_size
        self.method = method
        self.model = None
        self.variant = None
        self.real = FeatureStats(self.dim)
        self.fake = FeatureStats(self.dim)
        if self.weights_path is None:
            self.available = False
            self.reason = (
                "FID unavailable: no Inception weights file given; pass a local inception_v3 state dict "
                "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth for comparable numbers)."
            )
            return
        self.model, self.variant = self._build(self.weights_path, variant)
        self.model.to(self.device)
        self.available = True
        self.reason = None

    @staticmethod
    def _build(path: Path, variant: str):
        from torchvision.models import inception_v3

        state = load_state_dict(path, "Inception-v3")
        fc = state.get("fc.weight")
        if variant == "auto":
            variant = "pytorch-fid" if fc is not None and fc.shape[0] == 1008 else "torchvision"
        if variant not in ("pytorch-fid", "torchvision"):
            raise ValueError(f"unknown FID variant {variant!r}; choose 'auto', 'pytorch-fid' or 'torchvision'")
        # Only the convolutional trunk up to pool3 is used: the classifier and the auxiliary
        # head are dropped (whatever their class count) instead of being built and loaded.
        trunk = {
            k: v.float() if v.is_floating_point() else v
            for k, v in state.items()
            if not k.startswith(("fc.", "AuxLogits."))
        }
        with torch.device("meta"):  # skip random init of ~24M parameters about to be replaced
            model = inception_v3(weights=None, aux_logits=False, init_weights=False)
        model.fc = torch.nn.Identity()
        try:
            model.load_state_dict(trunk, strict=True, assign=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()[:200]
            raise UserError(
                f"{path} does not hold Inception-v3 weights for torchvision's architecture ({first}); "
                "pass torchvision's inception_v3 or pytorch-fid's pt_inception weights."
            ) from None
        if variant == "pytorch-fid":
            _patch_tf_inception(model)
        model.eval().requires_grad_(False)
        return model, variant

    @torch.inference_mode()
    def features(self, frames) -> np.ndarray:
        """Pool3 features (``N x 2048`` float64) of a batch of uint8 RGB frames."""
        if not self.available:
            raise RuntimeError(self.reason)
        x = _frames_to_tensor(frames, self.device)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        feats = self.model(2.0 * x - 1.0)
        return feats.reshape(feats.shape[0], -1).double().cpu().numpy()

    def _update(self, stats: FeatureStats, frames) -> None:
        if not self.available:
            return
        for batch in _batches(frames, self.batch_size):
            stats.update(self.features(batch))

    def update_real(self, frames) -> None:
        self._update(self.real, frames)

    def update_fake(self, frames) -> None:
        self._update(self.fake, frames)

    def compute(self) -> float | None:
        if not self.available:
            return None
        if self.method == "eigh":
            # The distance is symmetric: factor whichever set is still short (<= 2048 frames).
            short, other = (self.real, self.fake) if self.real.factor() is not None else (self.fake, self.real)
            fs = short.factor()
            if fs is not None:
                fo = other.factor()
                if fo is not None:
                    return frechet_from_factor(*fs, fo[0], b2=fo[1])
                return frechet_from_factor(*fs, *other.mean_cov())
        mu1, s1 = self.real.mean_cov()
        mu2, s2 = self.fake.mean_cov()
        return frechet_distance(mu1, s1, mu2, s2, method=self.method)

    def reset(self) -> None:
        self.real = FeatureStats(self.dim)
        self.fake = FeatureStats(self.dim)


# --------------------------------------------------------------------------------------------
# LPIPS

# Index of the ReLU whose output is tapped in torchvision's `features` (lpips' slice ends)
# and that layer's channel count.
_LPIPS_TAPS = {
    "alex": ((1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "vgg": ((3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}
# lpips v0.1 input scaling (applied to inputs in [-1, 1]).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_HEAD_KEY = re.compile(r"^lins?\.?(\d)\.model\.\d\.weight$")
_SLICE_KEY = re.compile(r"^net\.slice\d\.(\d+)\.(weight|bias)$")


class LPIPSMeter:
    """LPIPS distance between frames (lower = more similar), from local weights files.

    ``LPIPSMeter(weights_path, net="alex", backbone_path=None)``; see the module docstring
    for the file layout. ``distance(a, b)`` gives per-frame distances for uint8 ``HxWx3`` or
    ``NxHxWx3`` frames; ``update(a, b)`` also accumulates them and ``compute()`` returns the
    mean. With no file at all the meter is unavailable and returns None. ``variant`` is
    "lpips-v0.1" (learned heads) or "baseline" (no heads in the files: unweighted).
    """

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        net: str = "alex",
        *,
        backbone_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        if net not in _LPIPS_TAPS:
            raise ValueError(f"unknown LPIPS net {net!r}; choose 'alex' or 'vgg'")
        self.net = net
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.variant = None
        self._sum = 0.0
        self._n = 0
        paths = [Path(p) for p in (weights_path, backbone_path) if p is not None]
        if not paths:
            self.available = False
            self.reason = (
                f"LPIPS unavailable: no weights file given; pass the lpips package's {net}.pth heads "
                f"together with torchvision's {'alexnet' if net == 'alex' else 'vgg16'} weights."
            )
            self.features = self.heads = None
            return
        self.features, self.heads = self._build(paths)
        self.variant = "lpips-v0.1" if self.heads is not None else "baseline"
        self.available = True
        self.reason = None
        shape = (1, 3, 1, 1)
        self._shift = torch.tensor(_LPIPS_SHIFT, device=self.device).view(shape)
        self._scale = torch.tensor(_LPIPS_SCALE, device=self.device).view(shape)

    def _build(self, paths: list[Path]):
        from torchvision.models import alexnet, vgg16

        taps, chans = _LPIPS_TAPS[self.net]
        with torch.device("meta"):  # architecture only: every tensor comes from the files
            features = (alexnet if self.net == "alex" else vgg16)(weights=None).features[: taps[-1] + 1]
        expected = {k: v.shape for k, v in features.state_dict().items()}
        backbone: dict[str, torch.Tensor] = {}
        heads: dict[int, torch.Tensor] = {}
        origin: dict[str, Path] = {}
        for path in paths:
            for key, value in load_state_dict(path, f"LPIPS/{self.net}").items():
                if key.startswith("features."):
                    name = key[len("features.") :]
                elif m := _SLICE_KEY.match(key):
                    name = f"{m.group(1)}.{m.group(2)}"
                elif m := _HEAD_KEY.match(key):
                    heads[int(m.group(1))] = value
                    origin["heads"] = path
                    continue
                else:
                    continue
                if name in expected:
                    backbone[name] = value
                    origin["backbone"] = path
        names = " and ".join(str(p) for p in paths)
        if not backbone:
            raise UserError(
                f"{names} hold no {self.net} backbone weights; also pass torchvision's "
                f"{'alexnet' if self.net == 'alex' else 'vgg16'} state dict (e.g. as backbone_path)."
            )
        bad = [k for k, s in expected.items() if k not in backbone or backbone[k].shape != s]
        if bad:
            raise UserError(
                f"{origin['backbone']} does not match torchvision's {self.net} features (missing or "
                f"mis-shaped: {', '.join(bad[:3])}); pass the weights of net={self.net!r}."
            )
        features.load_state_dict({k: v.float() for k, v in backbone.items()}, assign=True)
        features.eval().requires_grad_(False).to(self.device)
        lin = None
        if heads:
            want = [(1, c, 1, 1) for c in chans]
            got = [tuple(heads[i].shape) if i in heads else None for i in range(len(chans))]
            if got != want:
                raise UserError(
                    f"{origin['heads']} holds LPIPS heads of shapes {got}, not the {self.net} heads "
                    f"{want}; pass the lpips package's {self.net}.pth."
                )
            lin = [heads[i].float().to(self.device) for i in range(len(chans))]
        return features, lin

    @torch.inference_mode()
    def distance(self, a, b) -> np.ndarray | None:
        """Per-frame LPIPS distances (float64 array of length N), or None if unavailable."""
        if not self.available:
            return None
        x = _frames_to_tensor(a, self.device)
        y = _frames_to_tensor(b, self.device)
        if x.shape != y.shape:
            raise ValueError(f"frames differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            out.append(self._lpips(x[i : i + self.batch_size], y[i : i + self.batch_size]))
        return torch.cat(out).double().cpu().numpy()

    def _lpips(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        taps = _LPIPS_TAPS[self.net][0]
        n = x.shape[0]
        # One pass over both images; [0,1] -> [-1,1] -> lpips' scaling layer.
        h = ((torch.cat([x, y]) * 2.0 - 1.0) - self._shift) / self._scale
        total = torch.zeros(n, device=x.device)
        layer = 0
        for idx, module in enumerate(self.features):
            h = module(h)
            if idx == taps[layer]:
                f = h / (torch.sqrt((h * h).sum(dim=1, keepdim=True)) + 1e-10)
                d = (f[:n] - f[n:]) ** 2
                d = (d * self.heads[layer]).sum(dim=1) if self.heads is not None else d.sum(dim=1)
                total += d.mean(dim=(1, 2))
                layer += 1
                if layer == len(taps):
                    break
        return total

    def update(self, a, b) -> float | None:
        """Add frame pairs to the running mean; returns their mean distance (None if unavailable)."""
        d = self.distance(a, b)
        if d is None:
            return None
        self._sum += float(d.sum())
        self._n += d.size
        return float(d.mean())

    def compute(self) -> float | None:
        """Mean distance over all pairs added, or None (unavailable or nothing added)."""
        if not self.available or self._n == 0:
            return None
        return self._sum / self._n

    def reset(self) -> None:
        self._sum = 0.0
        self._n = 0
