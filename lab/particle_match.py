"""Is this pair one particle saved twice? The full-resolution comparison of two images behind the near-copy search
(lab/near_copies.py: it finds the candidate pairs; measured in docs/similar.md, "Near-copies").

Each image's grey levels are moved so that its background (the border's median) is white; a dark-field image is
inverted. Then:
  alignment  (a pair with an image above FULL_MAX px reduced by one whole factor for both) the peak of the
             cross-correlation of the two images' darkness within FULL_SHIFT pixels, the most alike of the
             ALIGNMENT_PEAKS best offsets
  decision   a near-copy when all three hold:
             texture   1 - Pearson correlation over the pixels darker than OBJECT_LEVEL in both  <= TEXTURE_MAX
             shape     the share of one image's particle pixels (darker than SHAPE_DARK) that fall on the other's
                       background (at least SHAPE_BACKGROUND), the smaller of the two directions <= SHAPE_MAX
             noise     the Pearson correlation of the two images' fine detail (each minus its Gaussian blur of
                       NOISE_SIGMA px) over the particle's interior (the shared particle pixels, NOISE_ERODE px in
                       from its rim)  >= NOISE_MIN; a particle too thin for an interior is not judged on it
The texture alone passes look-alikes: two Acantharia with one dark core and their faint spines at other angles
(their spines do not overlap, so they never enter the texture's pixels). The shape catches them: each one's spines
lie on the other's background. It is taken in the smaller direction because brightening by 10 % erases a copy's
faintest pixels (they clip to white), so that the brighter copy's particle lies inside the original's, never
beside it. The noise catches two featureless particles of one size (the demo's dark discs): alike in texture and
shape, but each image's own pixel noise is its own, while a shifted, re-cropped or brightened copy keeps it. A JPEG
re-save at quality 70 keeps a textured particle's detail (measured: docs/similar.md) but blurs a featureless
one's noise away, so such a copy is often missed (docs/similar.md).

Reads image files (full_grey); writes nothing.
"""

import numpy as np

from lab import image_io

FULL_MAX = 256  # full-resolution side: larger crops are reduced by a whole factor (memory and time)
FULL_SHIFT = 4  # pixels of misalignment searched at full resolution
ALIGNMENT_PEAKS = 5  # offsets of highest cross-correlation tried, the most alike kept
FAR = 4  # ... while the pair is within FAR times a threshold of a near-copy
OBJECT_LEVEL = 250  # grey level below which a pixel belongs to the particle (the background is at 255)
MIN_INNER_PIXELS = 8  # fewer particle pixels in common: no texture to compare, never a near-copy
TEXTURE_MAX = 0.05  # the decision's thresholds (docs/similar.md: how they were chosen)
SHAPE_DARK = 240
SHAPE_BACKGROUND = 252
SHAPE_MAX = 0.02
FAINT_BACKGROUND = 254  # the background level of the shape mismatch for a particle with no pixel under SHAPE_DARK
NOISE_SIGMA = 1.0  # px: the blur whose residual is an image's fine detail and noise
NOISE_ERODE = 5  # px: the rim left out of the noise: a blurred rim is alike in any two particles, and the
#                          residual of a NOISE_SIGMA blur reaches 4 px past it
NOISE_MIN = 0.75  # copies of ndsb9 images measured 0.91 or more, distinct discs at most 0.53 (docs/similar.md)


def white_background(grey):
    """Grey levels (int16) moved so that the image's background (its border's median) is white (255); a
    dark-field image is inverted first, so that the particle is darker than its background."""
    grey = np.asarray(grey).astype(np.int16)
    background = int(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if background < 128:
        grey, background = 255 - grey, 255 - background
    return np.clip(grey + (255 - background), 0, 255)


def reduction(size):
    """The whole factor that brings an image of this (width, height) within FULL_MAX pixels."""
    return max(1, -(-max(size) // FULL_MAX))


def full_grey(path, factor=1):
    """The image at full resolution reduced by a whole factor (a pair is compared at the larger of its two images'
    reduction(), so at one scale), grey, background white (int16); None when it cannot be decoded."""
    try:
        img = image_io.load_rgb(path).convert("L")
    except Exception:  # unreadable since the scan: never a near-copy of anything
        return None
    if factor > 1:
        img = img.reduce(factor)
    return white_background(img)


def _pearson_distance(a, b):
    if len(a) < 2 or a.std() < 1e-6 or b.std() < 1e-6:
        return 2.0
    return float(1.0 - np.corrcoef(a, b)[0, 1])


def _decide(a, b, both):
    """(texture distance, shape mismatch) of aligned canvases a and b over the pixels both images cover."""
    inner = both & (a < OBJECT_LEVEL) & (b < OBJECT_LEVEL)
    texture = _pearson_distance(a[inner], b[inner]) if inner.sum() >= MIN_INNER_PIXELS else 2.0
    dark_a, dark_b = both & (a < SHAPE_DARK), both & (b < SHAPE_DARK)
    background = SHAPE_BACKGROUND
    if not (dark_a.any() and dark_b.any()):  # a faint particle (a thin diatom chain): judged on its faint pixels
        dark_a, dark_b, background = both & (a < OBJECT_LEVEL), both & (b < OBJECT_LEVEL), FAINT_BACKGROUND
        if not (dark_a.any() and dark_b.any()):
            return texture, 1.0
    a_on_background = (dark_a & (b >= background)).sum() / dark_a.sum()
    b_on_background = (dark_b & (a >= background)).sum() / dark_b.sum()
    return texture, float(min(a_on_background, b_on_background))


def _noise_correlation(a, b, both):
    """Pearson correlation of the fine detail (minus a NOISE_SIGMA blur) of aligned canvases a and b over the
    particle pixels they share, NOISE_ERODE px in from the rim; NaN for a particle too thin to have such an interior
    (a diatom chain, a rod): no noise to judge there, so texture and shape decide alone."""
    from scipy.ndimage import binary_erosion, gaussian_filter

    inner = both & (a < OBJECT_LEVEL) & (b < OBJECT_LEVEL)
    interior = binary_erosion(inner, iterations=NOISE_ERODE)
    if interior.sum() < MIN_INNER_PIXELS:
        return float("nan")
    detail_a, detail_b = (x - gaussian_filter(x, NOISE_SIGMA) for x in (a, b))
    return 1.0 - _pearson_distance(detail_a[interior], detail_b[interior])


def confirm(grey_a, grey_b):
    """(texture distance, shape mismatch, noise correlation, shift y, shift x) of two full-resolution greys: b
    aligned on a at one of the ALIGNMENT_PEAKS offsets (within FULL_SHIFT pixels) of highest darkness
    cross-correlation, the one that makes them most alike (a fine texture along one axis, a diatom chain's, has
    near-equal peaks a pixel apart). The noise is measured only where texture and shape make a near-copy (else
    -1): it costs two blurs."""
    if grey_a is None or grey_b is None:
        return 2.0, 1.0, -1.0, 0, 0
    h = max(grey_a.shape[0], grey_b.shape[0]) + 2 * FULL_SHIFT
    w = max(grey_a.shape[1], grey_b.shape[1]) + 2 * FULL_SHIFT
    canvases, covers = [], []
    for grey in (grey_a, grey_b):
        canvas, cover = np.full((h, w), 255.0), np.zeros((h, w), bool)
        canvas[FULL_SHIFT : FULL_SHIFT + grey.shape[0], FULL_SHIFT : FULL_SHIFT + grey.shape[1]] = grey
        cover[FULL_SHIFT : FULL_SHIFT + grey.shape[0], FULL_SHIFT : FULL_SHIFT + grey.shape[1]] = True
        canvases.append(canvas)
        covers.append(cover)
    a, b = canvases
    surface = np.fft.irfft2(np.fft.rfft2(255.0 - a) * np.conj(np.fft.rfft2(255.0 - b)), s=(h, w))
    window = np.arange(-FULL_SHIFT, FULL_SHIFT + 1)
    local = surface[window[:, None] % h, window[None, :] % w].ravel()
    best = None
    for k in np.argsort(-local, kind="stable")[:ALIGNMENT_PEAKS]:
        dy, dx = int(window[k // len(window)]), int(window[k % len(window)])
        both = covers[0] & np.roll(covers[1], (dy, dx), axis=(0, 1))
        texture, shape = _decide(a, np.roll(b, (dy, dx), axis=(0, 1)), both)
        score = max(texture / TEXTURE_MAX, shape / SHAPE_MAX)
        if best is None or score < best[0]:
            best = (score, texture, shape, dy, dx, both)
        if best[0] <= 1 or best[0] > FAR:  # a near-copy already, or too far for another offset to make it one
            break
    _, texture, shape, dy, dx, both = best
    noise = _noise_correlation(a, np.roll(b, (dy, dx), axis=(0, 1)), both) if best[0] <= 1 else -1.0
    return texture, shape, noise, dy, dx


def is_near_copy(texture, shape, noise):
    """The decision; a NaN noise (no interior to judge: _noise_correlation) leaves it to texture and shape."""
    noise = np.asarray(noise, dtype=float)
    return (
        (np.asarray(texture) <= TEXTURE_MAX)
        & (np.asarray(shape) <= SHAPE_MAX)
        & (np.isnan(noise) | (noise >= NOISE_MIN))
    )


def criterion():
    """The decision's constants, for results/near_copies.json."""
    return {
        "full_shift": FULL_SHIFT,
        "texture_max": TEXTURE_MAX,
        "shape_max": SHAPE_MAX,
        "shape_dark": SHAPE_DARK,
        "shape_background": SHAPE_BACKGROUND,
        "object_level": OBJECT_LEVEL,
        "noise_min": NOISE_MIN,
        "noise_sigma": NOISE_SIGMA,
        "noise_erode": NOISE_ERODE,
    }
