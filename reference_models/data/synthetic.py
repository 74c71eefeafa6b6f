"""Writers of small synthetic datasets in exactly the GlaS and MM-WHS CT on-disk formats.

The real readers (:mod:`.glas`, :mod:`.mmwhs`) read these files; nothing downstream knows they are
synthetic. Both generators make the structures' borders genuinely ambiguous (blur, noise, faint or
irregular structures, look-alike distractors, neighbouring chambers of similar intensity) so that a
segmentation network makes errors concentrated where the evidence is weak, which is what selective
segmentation is about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "GRADE_HEADER",
    "make_glas_image",
    "make_mmwhs_volume",
    "write_synthetic_glas",
    "write_synthetic_mmwhs",
]

GRADE_HEADER = "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"
_STROMA = np.array([222.0, 168.0, 198.0])
_EPITHELIUM = np.array([118.0, 66.0, 148.0])
_LUMEN = np.array([242.0, 228.0, 238.0])


def _gland_shape(rng, h, w, cy, cx, radius, irregularity):
    """Boolean mask and normalised radial coordinate of a star-shaped gland centred at (cy, cx)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    theta = np.arctan2(dy, dx)
    rho = np.hypot(dy, dx)
    aspect = rng.uniform(0.6, 1.0)
    tilt = rng.uniform(0, np.pi)
    boundary = radius * (1 - (1 - aspect) * np.cos(theta - tilt) ** 2)
    for k in (2, 3, 5):
        boundary *= 1 + irregularity * rng.uniform(-1, 1) / k * np.cos(k * theta + rng.uniform(0, 6.3))
    q = rho / np.maximum(boundary, 1e-6)
    return q <= 1.0, q


def make_glas_image(
    rng: np.random.Generator, height: int, width: int, malignant: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic H&E-like RGB image (uint8, H x W x 3) and its instance map (uint8, 0 = background).

    Glands are star-shaped with a dark epithelial rim and a pale lumen; each has its own contrast (some
    are faint), the image is blurred by a random amount and noised, and unannotated dark clusters mimic
    epithelium in the stroma. Malignant images have more irregular glands, filled lumens, lower contrast
    and more distractors.
    """
    instances = np.zeros((height, width), dtype=np.uint8)
    alpha_epi = np.zeros((height, width))
    alpha_lumen = np.zeros((height, width))
    n_target = max(2, int(height * width / (42.0**2) * rng.uniform(0.5, 0.8)))
    irregularity = 0.9 if malignant else 0.35
    gland_id = 0
    for _ in range(n_target * 6):
        if gland_id >= n_target:
            break
        radius = rng.uniform(10, 24)
        cy, cx = rng.uniform(-0.2 * radius, height + 0.2 * radius), rng.uniform(-0.2 * radius, width)
        inside, q = _gland_shape(rng, height, width, cy, cx, radius, irregularity)
        if not inside.any() or (ndimage.binary_dilation(inside, iterations=3) & (instances > 0)).any():
            continue
        gland_id += 1
        instances[inside] = gland_id
        contrast = rng.uniform(0.15, 0.7) if malignant else rng.uniform(0.3, 1.0)
        rim = rng.uniform(0.3, 0.5) if not malignant else rng.uniform(0.5, 1.0)
        epi = inside & (q > 1 - rim)
        lumen = inside & ~epi
        alpha_epi[epi] = contrast
        alpha_lumen[lumen] = contrast * (0.4 if malignant else 0.9)
        alpha_epi[lumen] = contrast * (0.5 if malignant else 0.0)
    # unannotated look-alikes: dark clusters in the stroma (inflammatory cells, tangentially cut glands)
    n_distract = rng.poisson(4 if malignant else 2)
    for _ in range(n_distract):
        inside, _q = _gland_shape(
            rng, height, width, rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 12), 0.8
        )
        inside &= instances == 0
        inside &= ~ndimage.binary_dilation(instances > 0, iterations=2)
        alpha_epi[inside] = np.maximum(alpha_epi[inside], rng.uniform(0.2, 0.6))
    blur = rng.uniform(1.0, 2.5)
    alpha_epi = ndimage.gaussian_filter(alpha_epi, blur)
    alpha_lumen = ndimage.gaussian_filter(alpha_lumen, blur)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 4.0)
    texture /= texture.std() + 1e-8
    stroma = _STROMA[None, None, :] + 10.0 * texture[..., None]
    rgb = stroma * (1 - alpha_epi - alpha_lumen)[..., None]
    rgb += alpha_epi[..., None] * _EPITHELIUM + alpha_lumen[..., None] * _LUMEN
    rgb += rng.normal(0, 12.0, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), instances


def write_synthetic_glas(
    directory: str | Path,
    *,
    n_train: int = 24,
    n_test_a: int = 12,
    n_test_b: int = 8,
    height_range: tuple[int, int] = (112, 160),
    width_range: tuple[int, int] = (144, 208),
    line_ending: str = "\r",
    seed: int = 0,
) -> Path:
    """Write a GlaS-format folder: ``{train,testA,testB}_N.bmp``, ``*_anno.bmp`` and ``Grade.csv``.

    Images vary in size within the given ranges. ``Grade.csv`` carries the real file's quirks: its exact
    header, a leading space before every value after the name, and ``line_ending`` between rows (a bare
    CR by default, as in some distributed copies). Train and Part A are mostly benign, Part B malignant.
    """
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [GRADE_HEADER]
    splits = [("train", n_train, 0.4), ("testA", n_test_a, 0.15), ("testB", n_test_b, 0.9)]
    patient = 0
    for split, count, p_malignant in splits:
        for number in range(1, count + 1):
            malignant = bool(rng.random() < p_malignant)
            height = int(rng.integers(height_range[0], height_range[1] + 1))
            width = int(rng.integers(width_range[0], width_range[1] + 1))
            rgb, instances = make_glas_image(rng, height, width, malignant)
            stem = f"{split}_{number}"
            Image.fromarray(rgb).save(directory / f"{stem}.bmp")
            Image.fromarray(instances).save(directory / f"{stem}_anno.bmp")
            if number % 3 == 1:
                patient += 1
            grade = "malignant" if malignant else "benign"
            fine = ("moderately differentiated" if malignant else "healthy", "adenomatous")[
                int(rng.random() < 0.5)
            ]
            rows.append(f"{stem}, {patient}, {grade}, {fine}")
    (directory / "Grade.csv").write_bytes((line_ending.join(rows) + line_ending).encode())
    return directory


# MM-WHS label values and CT-like Hounsfield units of each structure (contrast-enhanced cardiac CT: the
# left heart brighter than the right, myocardium darker than blood, fat and lungs around).
_STRUCTURES = {
    # name: (label value, HU, centre offset mm (x, y, z), radii mm)
    "RV": (600, 290.0, (-20.0, 12.0, -4.0), (20.0, 14.0, 17.0)),
    "RA": (550, 270.0, (-24.0, -6.0, 20.0), (15.0, 14.0, 14.0)),
    "LA": (420, 360.0, (4.0, -18.0, 20.0), (15.0, 12.0, 12.0)),
    "Myo": (205, 120.0, (6.0, 4.0, -2.0), (28.0, 22.0, 24.0)),
    "LV": (500, 370.0, (6.0, 4.0, -2.0), (21.0, 15.0, 17.0)),
}


def make_mmwhs_volume(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic cardiac CT (HU, int16) and its MM-WHS label volume (int16 label values).

    Chambers are randomly scaled and shifted ellipsoids, the great vessels cylinders leaving the top of
    the heart; neighbouring chambers share similar contrast so their common walls (valve planes) are
    ambiguous, and the image is blurred anisotropically (like thick slices) and noised.
    """
    grid = np.stack(
        np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    )
    extent = np.array(shape) * np.array(spacing)
    centre = extent / 2 + rng.uniform(-6, 6, 3)
    scale = rng.uniform(0.85, 1.15)
    hu = np.full(shape, 40.0)  # mediastinal soft tissue
    # lungs on both sides, fat around the heart
    for side in (-1, 1):
        offset = centre + np.array([side * 0.33 * extent[0], 0, 0])
        d = (
            (
                (grid - offset[:, None, None, None])
                / (np.array([0.2, 0.45, 0.6]) * extent)[:, None, None, None]
            )
            ** 2
        ).sum(0)
        hu[d <= 1] = -800.0
    label = np.zeros(shape, dtype=np.int16)
    fat = np.zeros(shape, dtype=bool)
    for value, level, offset, radii in _STRUCTURES.values():
        jitter = rng.uniform(0.85, 1.15, 3)
        c = centre + scale * np.array(offset) + rng.uniform(-2, 2, 3)
        r = scale * np.array(radii) * jitter
        d = (((grid - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0)
        fat |= d <= 1.35**2
        inside = d <= 1
        label[inside] = value
        hu[inside] = level + rng.normal(0, 15)
    for value, level, offset, radius in ((820, 365.0, (8.0, -4.0), 8.0), (850, 285.0, (-10.0, 12.0), 9.0)):
        c = centre[:2] + scale * np.array(offset) + rng.uniform(-2, 2, 2)
        radial = np.hypot(grid[0] - c[0], grid[1] - c[1])
        tube = (radial <= radius * scale * rng.uniform(0.9, 1.1)) & (grid[2] >= centre[2] + 10 * scale)
        tube &= label == 0
        label[tube] = value
        hu[tube] = level + rng.normal(0, 15)
        fat |= (radial <= radius * scale + 4) & (grid[2] >= centre[2] + 8 * scale)
    hu[fat & (label == 0)] = -90.0
    sigma_mm = np.array([1.2, 1.2, 2.5]) * rng.uniform(0.8, 1.4)
    hu = ndimage.gaussian_filter(hu, sigma_mm / np.array(spacing))
    hu += rng.normal(0, 45.0, shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def write_synthetic_mmwhs(
    directory: str | Path,
    *,
    n_volumes: int = 20,
    shape: tuple[int, int, int] = (48, 48, 32),
    spacing: tuple[float, float, float] = (2.2, 2.2, 3.4),
    nested: bool = True,
    first_case: int = 1001,
    seed: int = 0,
) -> Path:
    """Write ``ct_train_10XX_image.nii.gz`` / ``_label.nii.gz`` pairs (gzipped NIfTI-1, int16).

    Voxel spacing is anisotropic and stored in the header (``pixdim``) and the affine. Every third case
    uses 421 instead of 420 for the left atrium, as some MM-WHS volumes do. With ``nested`` the files go
    into ``directory/ct_train/`` like the official archive.
    """
    import nibabel as nib

    directory = Path(directory)
    target = directory / "ct_train" if nested else directory
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    for index in range(n_volumes):
        case = first_case + index
        hu, label = make_mmwhs_volume(rng, shape, spacing)
        if index % 3 == 2:
            label[label == 420] = 421
        for kind, data in (("image", hu), ("label", label)):
            img = nib.Nifti1Image(data, affine)
            img.header.set_zooms(spacing)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(target / f"ct_train_{case}_{kind}.nii.gz"))
    return directory
