"""True FID / Inception Score with the FID Inception-v3, only from files the user supplies.

Nothing is downloaded. Needed:
- the weights file in torch-fidelity's format (`weights-inception-2015-12-05-6726825d.pth`, the TF
  2015-12-05 graph converted to PyTorch), passed as --inception-weights;
- a reference batch .npz with `arr_0` uint8 [N, H, W, 3] (e.g. ADM's VIRTUAL_imagenet256_labeled.npz),
  passed as --ref-batch; its statistics are recomputed with the same network (the npz's own mu/sigma
  come from the TF graph and are not mixed with PyTorch features);
- the `torch-fidelity` package (`pip install --no-deps torch-fidelity==0.4.0`). Its package
  __init__ imports torchvision for other extractors; when torchvision is absent (no CPU wheel on
  some machines) the Inception module alone is loaded, which needs only torch.

Scores follow torch-fidelity / ADM: FID on the 2048-d pool features, IS on softmax of the bias-free
logits ("logits_unbiased", 1008 classes) with 10 splits.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

from coarse2fine.config import UserError

INSTALL_HINT = "pip install --no-deps torch-fidelity==0.4.0"


def _import_fidelity_inception():
    """Return torch_fidelity's FeatureExtractorInceptionV3 class (UserError when not installed)."""
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise UserError(f"true FID/IS needs the torch-fidelity package ({INSTALL_HINT}); "
                            f"import failed: {e}") from e
    # torch_fidelity/__init__ pulled in torchvision (for CLIP/VGG/datasets). The Inception extractor
    # and its helpers import only torch, so expose the package directory without running __init__.
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"true FID/IS needs the torch-fidelity package ({INSTALL_HINT})")
    for name in [m for m in sys.modules if m == "torch_fidelity" or m.startswith("torch_fidelity.")]:
        del sys.modules[name]  # drop the half-initialised package left by the failed import
    shell = types.ModuleType("torch_fidelity")
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = shell
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3
    except ImportError as e:
        del sys.modules["torch_fidelity"]
        raise UserError(f"torch-fidelity is installed but its Inception module cannot load without "
                        f"torchvision ({e}); install torchvision or torch-fidelity==0.4.0") from e


def check_weights_file(path: str | Path) -> Path:
    """Validate a torch-fidelity Inception weights file safely (weights_only) before it is used."""
    from coarse2fine.checkpoint import load_torch_file

    p = Path(path)
    sd = load_torch_file(p)
    fc = sd.get("fc.weight") if isinstance(sd, dict) else None
    if fc is None or tuple(fc.shape) != (1008, 2048) or "Conv2d_1a_3x3.conv.weight" not in sd:
        raise UserError(f"{p} is not torch-fidelity's FID Inception-v3 state dict "
                        "(expected keys Conv2d_1a_3x3.conv.weight and fc.weight [1008, 2048]; "
                        "the file is weights-inception-2015-12-05-6726825d.pth)")
    return p


class InceptionV3FID(torch.nn.Module):
    """uint8 images -> (pool features [B, 2048], bias-free logits [B, 1008]), float32.

    Input: uint8 [B, H, W, 3] or [B, 3, H, W]; resized to 299 px inside (TF1-compatible bilinear).
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = check_weights_file(weights_path)
        cls = _import_fidelity_inception()
        self.net = cls("inception-v3-compat", ["2048", "logits_unbiased"],
                       feature_extractor_weights_path=str(path))
        self.net.eval()

    def forward(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise UserError(f"Inception-v3 FID expects uint8 [B, H, W, 3] images, got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)  # B, H, W, 3 -> B, 3, H, W
        dev = next(self.net.parameters()).device
        feats, logits = self.net(x.contiguous().to(dev))
        return feats.float().cpu(), logits.float().cpu()


def check_ref_batch(path: str | Path) -> tuple[int, ...]:
    """The shape of an ADM reference batch's `arr_0`, read from the .npz's directory and the array's header
    without its pixels: `eval` checks the file before it samples or extracts a feature."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"reference batch {p} not found")
    fix = "the file is damaged or not an .npz: download or copy the reference batch again"
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            if "arr_0.npy" in names:
                with z.open("arr_0.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # empty, truncated, not an npz
        raise UserError(f"cannot read reference batch {p} ({type(e).__name__}: {e}); {fix}") from None
    if "arr_0.npy" not in names:
        raise UserError(f"{p} has no arr_0 (keys {[n.removesuffix('.npy') for n in names]}); expected an ADM "
                        "reference batch")
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise UserError(f"{p}: arr_0 must be uint8 [N, H, W, 3], got {dtype} {shape}")
    return shape


def load_ref_batch(path: str | Path) -> np.ndarray:
    """ADM reference batch: `arr_0` uint8 [N, H, W, 3] from an .npz."""
    p = Path(path)
    check_ref_batch(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            return z["arr_0"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a damaged member
        raise UserError(f"cannot read reference batch {p} ({type(e).__name__}: {e}); the file is damaged: download "
                        "or copy the reference batch again") from None


@torch.inference_mode()
def inception_outputs(model: InceptionV3FID, images: np.ndarray, batch_size: int = 50,
                      desc: str = "inception") -> tuple[np.ndarray, np.ndarray]:
    """(features float64 [N, 2048], probabilities float64 [N, 1008]) for uint8 NHWC images."""
    from tqdm import tqdm

    feats, probs = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=None, leave=False):
        f, logits = model(images[start:start + batch_size])
        feats.append(f.double().numpy())
        probs.append(logits.double().softmax(-1).numpy())
    return np.concatenate(feats), np.concatenate(probs)
