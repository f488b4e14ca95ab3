"""Image preprocessing shared by every data set (the LlamaGen / ADM recipe).

Pipeline for one image: decode -> `to_rgb` (any PIL mode to 8-bit RGB, transparency composited on
white) -> `center_crop_arr` (BOX halving, BICUBIC resize, centre crop to size x size) -> uint8
HxWx3 -> `to_tensor` (float [3, H, W] in [-1, 1]). `to_uint8` is the inverse used to save samples.
"""
from __future__ import annotations

import io
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from coarse2fine.fileio import atomic_write_bytes

# Fixed background for transparent pixels (emoji, icons, clip art). White rather than black:
# line art and emoji are drawn for light backgrounds, so white keeps dark outlines visible.
BACKGROUND = (255, 255, 255)

# Our own cap on decoded pixels, checked from the header before any pixel is decoded. PIL's default
# (~89M px, hard error at 2x) would let a 178M px image through with only a warning and ~700 MB of RGBA.
MAX_PIXELS = 64_000_000

# Images whose shorter side is below this are skipped by file loaders: at 1-7 px there is nothing to
# upscale (spacer GIFs, favicons, tracking pixels), and training on them would only teach blur.
MIN_SIDE = 8

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class UnreadableImage(Exception):
    """A file that cannot be used as a training image; str(e) is a short human-readable reason."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    Grey (L, 1, I;16, I, F) is replicated over three channels; 16-/32-bit grey is scaled to 8 bits
    (I;16 by /257; I and F by /257 when they hold values above 255, else taken as 0..255).
    Anything with an alpha channel or a transparency key (RGBA, LA, PA, P/L/RGB with tRNS) is
    alpha-composited on the fixed white `BACKGROUND`. CMYK/YCbCr/LAB/HSV use PIL's conversion.
    """
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0.0) > 255.0:
            arr = arr / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def center_crop_arr(pil_image: Image.Image, size: int) -> Image.Image:
    """ADM / LlamaGen centre crop: returns a size x size PIL image (same mode as the input).

    While the shorter side is >= 2*size, halve with a BOX filter (cheap and alias-free); then one
    BICUBIC resize makes the shorter side exactly `size` (this also upsamples small inputs, e.g.
    28x28 -> 32x32); then crop the centre (offset floor((W - size) / 2)).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    img = pil_image
    while min(img.size) >= 2 * size:
        img = img.resize((img.width // 2, img.height // 2), resample=Image.BOX)
    scale = size / min(img.size)
    new_w = max(size, round(img.width * scale))
    new_h = max(size, round(img.height * scale))
    img = img.resize((new_w, new_h), resample=Image.BICUBIC)
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """Any PIL image -> uint8 array [size, size, 3] (to_rgb then center_crop_arr)."""
    return np.asarray(center_crop_arr(to_rgb(img), size), dtype=np.uint8)


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL RGB image or uint8 array [H, W, 3] -> FloatTensor [3, H, W] in [-1, 1] (u / 127.5 - 1)."""
    arr = np.asarray(to_rgb(image) if isinstance(image, Image.Image) else image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    # numpy, not torch ops: per-item conversion in data loading should not start intra-op thread
    # pools (torch's threaded small-tensor ops were ~100x slower here on a busy 2-core machine).
    chw = arr.transpose(2, 0, 1).astype(np.float32)  # [H,W,3] -> [3,H,W]
    chw /= np.float32(127.5)
    chw -= np.float32(1.0)
    return torch.from_numpy(chw)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float tensor in [-1, 1] (any shape) -> uint8 tensor of the same shape: clamp(127.5*x + 128).

    The +128 (not +127.5) with truncation rounds to nearest, so to_uint8(to_tensor(a)) == a.
    """
    return x.detach().float().mul(127.5).add(128.0).clamp_(0.0, 255.0).to(torch.uint8)


def _as_nhwc_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.dtype != torch.uint8:
            t = to_uint8(t)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim == 4 and t.shape[1] in (1, 3) and t.shape[-1] not in (1, 3):
            t = t.permute(0, 2, 3, 1)  # [N,C,H,W] -> [N,H,W,C]
        arr = t.numpy()
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8, got {arr.dtype}")
        if arr.ndim == 3:
            arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, 3] (or a [N, 3, H, W] tensor), got {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def make_grid(images: np.ndarray | torch.Tensor, nrow: int = 8, pad: int = 2,
              pad_value: int = 255) -> np.ndarray:
    """Tile N images into one uint8 array; `nrow` images per row, `pad` px of `pad_value` between.

    images: uint8 [N, H, W, 3] array, or a tensor [N, 3, H, W] (float in [-1, 1] or uint8).
    Returns uint8 [rows*(H+pad)+pad, nrow*(W+pad)+pad, 3] with rows = ceil(N / nrow).
    """
    arr = _as_nhwc_uint8(images)
    n, h, w, _ = arr.shape
    if n == 0:
        raise ValueError("make_grid needs at least one image")
    nrow = max(1, min(nrow, n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), pad_value, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = arr[i]
    return grid


def save_grid(images: np.ndarray | torch.Tensor, path: str | Path, nrow: int = 8, pad: int = 2) -> Path:
    """Write a PNG grid of images (see `make_grid` for accepted shapes) atomically; returns the path.

    A None entry is not allowed; to leave a cell blank pass a white image.
    """
    buf = io.BytesIO()
    Image.fromarray(make_grid(images, nrow=nrow, pad=pad), "RGB").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_image_file(path: str | Path, size: int | None = None) -> Image.Image:
    """Open an image file safely and return it as 8-bit RGB (EXIF rotation applied).

    `size` (target resolution) lets JPEG decode at a reduced scale via Image.draft, never below
    size x size, so a 20-megapixel photo costs a fraction of a full decode. Raises UnreadableImage
    for: not an image, corrupt/truncated data, more than MAX_PIXELS pixels (checked from the header
    before decoding), shorter side below MIN_SIDE.
    """
    try:
        with warnings.catch_warnings():
            # Our MAX_PIXELS check below replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_dimensions(img.size)
                if size is not None:
                    img.draft(None, (size, size))
                img.load()
                out = to_rgb(_exif_upright(img))
                # Closing the file (end of `with`) frees the decoded pixels of `img` itself.
                return out.copy() if out is img else out
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"too large ({e})") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image file") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # PIL reports truncated/corrupt data as OSError/SyntaxError/ValueError/EOFError.
        raise UnreadableImage(f"corrupt image ({type(e).__name__}: {e})") from None


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phone photos); a malformed EXIF block leaves the image as is."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, struct.error):
        return img


def check_dimensions(size: tuple[int, int]) -> None:
    """Raise UnreadableImage if a (width, height) is above MAX_PIXELS or below MIN_SIDE."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise UnreadableImage(f"too large ({w}x{h} px > {MAX_PIXELS:,} px cap)")
    if min(w, h) < MIN_SIDE:
        raise UnreadableImage(f"too small ({w}x{h} px; shorter side < {MIN_SIDE})")
