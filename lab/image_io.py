"""Images: decoding any common format and mode (16-bit, transparency, EXIF orientation, multi-frame, huge
JPEGs in bounded memory), the letterbox to a square, uint8 pixels normalised on the device with the ImageNet
statistics, the dihedral views of a batch (`dihedral_view`: the trunk_views setting's flips and quarter turns), and
the Dataset of the trunk pass. Reads image files; writes nothing.
"""

import hashlib
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error to report, not grey pixels to learn from
Image.MAX_IMAGE_PIXELS = 200_000_000  # above it Pillow warns of a decompression bomb (a note), above 2x it refuses


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's ImageNet weights were trained with


IMAGENET_STD = (0.229, 0.224, 0.225)


# The most pixels ever decoded at full resolution: 50 MP (e.g. 7000 x 7000, or a 40,000 x 1,250 strip) stays
# under 1 GB of memory in any mode. JPEGs above it are decoded at 1/2, 1/4 or 1/8 scale; other formats are refused.
DECODE_PIXEL_BOUND = 50_000_000


REDUCING_GAP = 3  # images are reduced to no less than 3x the output side before the final resize: no aliasing


# The common formats Pillow reads, by extension (any case); a format whose codec this Pillow lacks is left out.
COMMON_FORMATS = {
    "JPEG": None,
    "PNG": None,
    "TIFF": None,
    "BMP": None,
    "DIB": None,
    "GIF": None,
    "PPM": None,
    "WEBP": "webp",
    "JPEG2000": "jpg_2000",
    "AVIF": "avif",
}


EXIF_ORIENTATION = 0x0112


ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def readable_extensions():
    from PIL import features as pil_features

    Image.init()
    return {
        ext
        for ext, fmt in Image.registered_extensions().items()
        if fmt in COMMON_FORMATS
        and fmt in Image.OPEN
        and (COMMON_FORMATS[fmt] is None or pil_features.check(COMMON_FORMATS[fmt]))
    }


IMAGE_EXTENSIONS = readable_extensions()


class ImageTooLarge(Exception):
    """An image that cannot be decoded within DECODE_PIXEL_BOUND."""


# --------------------------------------------------------------------------- image decoding
def value_range(img):
    """(low, high) of a 16-bit, 32-bit integer or float image, from the whole image: the scale of every band."""
    low, high = img.getextrema()
    if not (np.isfinite(low) and np.isfinite(high)):  # NaN pixels in a float image
        pixels = np.asarray(img)
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
    return float(low), float(high)


def to_rgb(img, scale=None):
    """Any PIL mode -> 8-bit RGB: transparency onto white (the crops' background), 16-bit scaled by bit depth.
    scale: value_range of the whole image, when img is a band of it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        low, high = scale or value_range(img)
        pixels = np.array(img, dtype=np.float32)
        if img.mode == "F":
            pixels -= low
            pixels *= 255.0 / (high - low or 1.0)
        else:  # 12- or 16-bit sensors: scale by the bit depth actually used, not by the image's own max
            bits = max(8, int(np.ceil(np.log2(max(high, 1.0) + 1))))
            pixels *= 255.0 / (2**bits - 1)
        img = Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def reduced_rgb(img, side):
    """to_rgb, then reduce by a whole factor (box average) while the longer side stays >= REDUCING_GAP x side,
    band by band: memory beyond the decoded image stays a few MB whatever its size and mode. The factor is
    the first step Pillow's own resize would take; compositing before averaging keeps transparent edges white."""
    factor = max(img.size) // (REDUCING_GAP * side) if side else 0
    if factor < 2:
        return to_rgb(img)
    scale = value_range(img) if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") else None
    w, h = img.size
    rows = max(1, 4_000_000 // (w * factor)) * factor  # bands of about 4 MP, whole blocks of the reduction
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for top in range(0, h, rows):
        band = to_rgb(img.crop((0, top, w, min(h, top + rows))), scale)
        out.paste(band.reduce(int(factor)), (0, top // factor))
    return out


def decode(path, side=None):
    """(8-bit RGB image, notes) of one file, in bounded memory. side: the output side it is meant for (the
    image is reduced toward REDUCING_GAP x side; None keeps the full size). EXIF orientation is applied; a
    multi-frame file gives its first frame; Pillow's decompression-bomb warning becomes a note. Raises
    ImageTooLarge, or Pillow's errors for broken files."""
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(path) as img:
            if getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1:
                notes.append(("multi-frame file: first frame used", f"{img.n_frames} frames"))
                img.seek(0)
            full_size = img.size
            if side and img.format == "JPEG" and max(img.size) >= 2 * REDUCING_GAP * side:
                scale = REDUCING_GAP * side / max(img.size)  # libjpeg decodes at 1/2, 1/4 or 1/8 directly
                img.draft(None, (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
            if img.size[0] * img.size[1] > DECODE_PIXEL_BOUND:
                raise ImageTooLarge(
                    f"too large to decode within memory: {full_size[0]} x {full_size[1]} px "
                    f"({full_size[0] * full_size[1] / 1e6:.0f} MP), above the lab's bound of "
                    f"{DECODE_PIXEL_BOUND / 1e6:.0f} MP for {img.format} files (only JPEGs are "
                    f"decoded at reduced size); downscale it or save it as JPEG"
                )
            img.load()
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            rgb = reduced_rgb(img, side)
        if orientation in ORIENTATION_FIX:
            rgb = rgb.transpose(ORIENTATION_FIX[orientation])
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        notes.append(
            (
                "very large image (Pillow's decompression-bomb warning)",
                f"{full_size[0]} x {full_size[1]} px, decoded at {rgb.size[0]} x {rgb.size[1]}",
            )
        )
    return rgb, notes


def load_rgb(path, side=None):
    return decode(path, side)[0]


def letterbox(img, size):
    """Reduce, then pad to a square with the border's median colour, then resize: the organism keeps its
    aspect ratio, and padding happens after downsizing (a 40,000 x 400 strip is never a 40,000 px square)."""
    img = reduced_rgb(img, size)
    w, h = img.size
    if w != h:
        pixels = np.asarray(img)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        fill = tuple(int(v) for v in np.median(border, axis=0))
        side = max(w, h)
        square = Image.new("RGB", (side, side), fill)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    return img.resize((size, size), Image.BILINEAR, reducing_gap=REDUCING_GAP)


def image_pixels(img, size):
    """The letterboxed image as a uint8 tensor (3 x size x size): what decoding workers hand over (a quarter of the
    bytes of float32, and no arithmetic in the workers); `normalise` turns a batch of them into the trunk's input."""
    return torch.from_numpy(np.array(letterbox(img, size), dtype=np.uint8).transpose(2, 0, 1).copy())


# x / 255 then (x - mean) / std, as one multiply-add per pixel: x * _SCALE + _SHIFT
_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], dtype=torch.float32).view(1, 3, 1, 1)


_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dtype=torch.float32).view(1, 3, 1, 1)


def normalise(pixels):
    """uint8 batch (n x 3 x h x w, on any device) -> float32, scaled to [0, 1] and standardised by the ImageNet
    statistics the trunk was trained with; done on the trunk's device, in one pass over the batch."""
    return torch.addcmul(_SHIFT.to(pixels.device), pixels.float(), _SCALE.to(pixels.device))


# The 8 dihedral views of a square image (plankton have no up or down), in the one order the lab uses: view v is
# VIEW_TURNS[v % 4] quarter turns counter-clockwise (torch.rot90), then, for v >= 4, a left-right flip. Identity,
# half turn, quarter turn, three-quarter turn, then the flip of each: so the first 1, 2, 4 and 8 views (the values
# of trunk_views) are each a group, closed under composition, and averaging a model's outputs over them gives the
# same answer for an image and for any of its views in the group.
VIEW_TURNS = (0, 2, 1, 3)
VIEWS = 2 * len(VIEW_TURNS)


def dihedral_view(images, view):
    """The view-th dihedral transform (VIEW_TURNS) of a batch of square images (..., H, W); view 0 is the batch
    itself, untouched."""
    if view == 0:
        return images
    turned = torch.rot90(images, VIEW_TURNS[view % 4], dims=(-2, -1))
    return torch.flip(turned, dims=(-1,)) if view >= 4 else turned


def image_tensor(img, size):
    """One image as the trunk sees it (float32, normalised): image_pixels then normalise."""
    return normalise(image_pixels(img, size)[None])[0]


def inspect_file(path, side=None):
    """(reason it cannot be used or None, notes, sha256 of its bytes) of one image file. The file is decoded
    as the trunk pass will decode it (bounded: see decode), so what passes here loads later."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)", [], None
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        notes = decode(path, side)[1]
        return None, notes, digest
    except ImageTooLarge as exc:
        return str(exc), [], None
    except Image.DecompressionBombError as exc:
        return f"refused by Pillow as a possible decompression bomb: {str(exc)[:160]}", [], None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(exc).__name__}: {str(exc)[:120]}", [], None


def check_image(path, side=None):
    """None if the file decodes, else the reason it cannot be used."""
    return inspect_file(path, side)[0]


class ImageDataset(torch.utils.data.Dataset):
    """Images by absolute path -> (uint8 pixels, see image_pixels; ok flag); a file that fails to decode gives
    ok=False. Batches go through `normalise` on the trunk's device."""

    def __init__(self, paths, image_size):
        self.paths, self.image_size = list(paths), image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return image_pixels(load_rgb(self.paths[i], self.image_size), self.image_size), True
        except Exception:
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), False
