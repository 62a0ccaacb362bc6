"""Image sources: folders of image files. Host-only (file I/O and decoding with Pillow).

A folder is searched recursively for PNG, JPEG, WebP, BMP, GIF (first frame) and TIFF files, in
sorted path order so every run and every host sees the same list. Grayscale, palette, 16-bit and
RGBA images are converted to 8-bit RGB (alpha is dropped, as pytorch-fid and torch-fidelity do by
calling ``convert("RGB")``). A file that cannot be decoded is skipped with a warning that names it;
a folder with no readable image is an error.
"""

import pathlib
import warnings

import numpy as np
from PIL import Image

from jaxmetrics._errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_images(folder):
  """Sorted paths of the image files under ``folder`` (recursive), by extension."""
  folder = pathlib.Path(folder)
  if not folder.exists():
    raise InputError(f"{folder}: no such file or folder")
  if not folder.is_dir():
    raise InputError(f"{folder}: expected a folder of images, got a file")
  paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
  if not paths:
    raise InputError(f"{folder}: expected image files ({', '.join(IMAGE_EXTENSIONS)}), found none")
  return paths


def read_image(path):
  """Decodes one file to a uint8 ``(H, W, 3)`` RGB array; raises ``InputError`` naming the file."""
  try:
    with Image.open(path) as image:
      if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (PNG opens as "I;16" or "I"): PIL's convert("RGB") clips at 255
        # instead of scaling, which would turn most of the image white.
        array = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(array * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise InputError(f"{path}: cannot decode as an image ({' '.join(str(e).split())})") from None


def read_folder(folder):
  """Reads every decodable image under ``folder``; warns about and skips the others.

  Returns:
    ``(paths, images)``: the files read and a list of uint8 ``(H, W, 3)`` arrays, in sorted order.
  """
  paths, images = [], []
  for path in list_images(folder):
    try:
      images.append(read_image(path))
    except InputError as e:
      warnings.warn(f"skipped {e}", stacklevel=2)
      continue
    paths.append(path)
  if not images:
    raise InputError(f"{folder}: expected readable images, but none of the files could be decoded")
  return paths, images
