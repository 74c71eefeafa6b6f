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
    "GENERATOR_VERSIONS",
    "GRADE_HEADER",
    "make_glas_image",
    "make_mmwhs_volume",
    "write_synthetic_glas",
    "write_synthetic_mmwhs",
]

#: Version of each generator; it names the cache folder, so a change of the drawing makes a fresh dataset.
#: synthetic-mmwhs 2-4: anatomy around the heart, random pose and field of view, shared contrast levels
#: (3: a 168 mm field of view, the right heart kept brighter than the myocardium, a weaker bias field;
#: 4: wider great vessels).
GENERATOR_VERSIONS = {"synthetic-glas": 1, "synthetic-mmwhs": 4}
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


# MM-WHS label values (left atrium 420; ``write_synthetic_mmwhs`` writes 421 in every third case)
_LV, _RV, _LA, _RA, _MYO, _AO, _PA = 500, 600, 420, 550, 205, 820, 850


def _superquadric(p: np.ndarray, centre, radii, exponent: float) -> np.ndarray:
    """Normalised superquadric radius of the points ``p`` (3, ...): <= 1 inside."""
    total = sum(np.abs((p[i] - centre[i]) / radii[i]) ** exponent for i in range(3))
    return total ** (1.0 / exponent)


def _tube(p: np.ndarray, start, end) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) of ``p`` (3, ...) to the segment ``start``-``end`` and the position t in [0, 1] on it."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    rel = p - start[:, None, None, None]
    t = np.clip(np.tensordot(axis, rel, axes=1) / (axis @ axis), 0.0, 1.0)
    closest = start[:, None, None, None] + axis[:, None, None, None] * t
    return np.sqrt(((p - closest) ** 2).sum(0)), t


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int) -> np.ndarray:
    """Random field of unit standard deviation that varies over about ``shape / coarse`` voxels."""
    noise = rng.normal(0.0, 1.0, (coarse + 3,) * len(shape))
    field = ndimage.zoom(noise, [(n + 2) / coarse for n in shape], order=3)
    offset = [(f - n) // 2 for f, n in zip(field.shape, shape, strict=True)]
    field = field[tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))]
    return field / (field.std() + 1e-8)


def _rotation(rng: np.random.Generator, about_z: float, tilt: float) -> np.ndarray:
    """Rotation matrix: a uniform angle in +-``about_z`` degrees about z, then +-``tilt`` about x and y."""
    a, b, c = np.deg2rad([rng.uniform(-about_z, about_z), rng.uniform(-tilt, tilt), rng.uniform(-tilt, tilt)])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def make_mmwhs_volume(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic contrast-enhanced cardiac CT (HU, int16) and its MM-WHS label volume (int16 values).

    The anatomy is drawn in body coordinates (mm; x towards the patient's left, y posterior, z cranial)
    around the heart and placed in the field of view by a random pose, so that a voxel's position says
    little about its class and the intensity alone cannot tell the labelled structures from their
    neighbours:

    - **pose and field of view**: the heart centre is shifted by up to 12% of the field of view along
      each axis, the anatomy is scaled by 1.1-1.35 (in the default 168 x 168 x 176 mm field of view the
      heart may be cut at its border), rotated by up to 18 degrees about the long (cranio-caudal) axis and
      tilted by up to 6 degrees; the heart turns by up to 12 degrees more against the chest, and a smooth
      random displacement field (about 6 mm) bends every shape;
    - **shapes**: chambers are superquadrics (random exponents, radii and centres), the myocardium a shell
      around the left ventricle, the ascending aorta and the pulmonary trunk (with a branch) tubes leaving
      the top of the heart; the aortic arch joins the descending aorta behind the heart;
    - **anatomy around the heart, all unlabelled (label 0)**: the descending aorta (contrast-filled, the
      same HU as the left heart), vertebral bodies (cortex, cancellous bone of 350-500 HU, discs) with a
      dark spinal canal, ribs, lungs with vessels, the liver below the diaphragm (HU overlapping the
      myocardium), pericardial and subcutaneous fat;
    - **intensities**: the left heart (LV, LA, AO) shares one contrast level, drawn per volume in
      280-500 HU; the right heart (RV, RA, PA) another, 0.55-0.85 times it but at least 110 HU above the
      myocardium (so the two ranges overlap across volumes); the myocardium (70-150 HU) and the liver
      (the myocardium's level +-35 HU) are drawn per volume; a smooth multiplicative bias field
      (standard deviation 4% of the attenuation HU + 1000), an anisotropic blur (thick slices) and
      Gaussian noise of 15-30 HU.
    """
    spacing_arr = np.asarray(spacing, float)
    extent = np.asarray(shape) * spacing_arr
    world = np.stack(
        np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    )
    centre = extent / 2 + rng.uniform(-0.12, 0.12, 3) * extent
    scale = rng.uniform(1.1, 1.35)
    body_rot = _rotation(rng, 18.0, 6.0)
    # body coordinates: undo the pose, then bend by a smooth displacement field (mm)
    rel = world - centre[:, None, None, None]
    p = np.tensordot(body_rot.T, rel, axes=1) / scale
    coarse = max(2, round(extent.max() / 40.0))
    p = p + np.stack([_smooth_field(rng, shape, coarse) for _ in range(3)]) * 6.0
    heart_rot = _rotation(rng, 12.0, 8.0)
    q = np.tensordot(heart_rot.T, p, axes=1)  # heart coordinates
    x, y, z = p

    left = rng.uniform(280.0, 500.0)
    myo_level = rng.uniform(70.0, 150.0)
    # the right heart is dimmer than the left but stays clearly brighter than the myocardium
    right = max(left * rng.uniform(0.55, 0.85), myo_level + 110.0)
    liver_level = myo_level + rng.uniform(-35.0, 35.0)

    hu = np.full(shape, 45.0)  # chest wall and mediastinal soft tissue
    label = np.zeros(shape, dtype=np.int16)

    # body outline (air outside), subcutaneous fat, the thoracic cavity and the lungs
    outer = (x / 165.0) ** 2 + ((y - 20.0) / 125.0) ** 2
    hu[outer > 1.0] = -1000.0
    hu[(outer <= 1.0) & (outer > 0.85)] = -100.0
    cavity = (x / 128.0) ** 2 + ((y - 25.0) / 98.0) ** 2
    diaphragm = -40.0 + rng.uniform(-8, 8) - 0.0025 * (x + 25.0) ** 2 - 0.0015 * y**2
    thorax = (cavity <= 1.0) & (z > diaphragm)
    mediastinum = (np.abs(x) < 30.0) & (y < 70.0)
    heart_zone = _superquadric(q, (-4.0, 4.0, 0.0), (62.0, 58.0, 62.0), 2.0) <= 1.0
    lung = thorax & ~mediastinum & ~heart_zone & (y < 100.0)
    lung &= ~((np.abs(x) < 45.0) & (y > 40.0))  # the posterior mediastinum: spine, aorta
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), 1.2 / spacing_arr.mean() * 2.0)
    vessels = texture > 2.2 * texture.std()
    hu[lung] = -840.0 + 40.0 * texture[lung] / (texture.std() + 1e-8)
    hu[lung & vessels] = right * 0.6
    hu[heart_zone & (z > diaphragm)] = -80.0  # pericardial fat
    # liver below the diaphragm on the right (it reaches across the midline), spleen/stomach on the left
    below = (cavity <= 1.1) & (z <= diaphragm)
    liver = below & (x < 40.0 + rng.uniform(-10, 10))
    hu[below] = 50.0
    hu[liver] = liver_level

    # ribs: bone on the cavity's wall at oblique, regularly spaced levels
    wall = (cavity > 1.0) & (cavity <= 1.18)
    rib_phase = (z - 0.3 * y + rng.uniform(0.0, 32.0)) % 32.0
    ribs = wall & (rib_phase < 9.0)
    hu[ribs] = rng.uniform(500.0, 800.0)
    # spine: vertebral bodies (cortex, cancellous bone, discs), a dark canal inside the neural arch
    body = ((x / 21.0) ** 2 + ((y - 82.0) / 17.0) ** 2) <= 1.0
    cortex = body & (((x / 17.0) ** 2 + ((y - 82.0) / 13.0) ** 2) > 1.0)
    disc = ((z + rng.uniform(0.0, 27.0)) % 27.0) < 6.0
    arch = (np.hypot(x, y - 110.0) <= 15.0) & (y > 97.0)
    canal = np.hypot(x, y - 108.0) <= 8.0
    bone_level = rng.uniform(350.0, 500.0)
    hu[body] = bone_level
    hu[cortex | arch] = rng.uniform(700.0, 1000.0)
    hu[body & disc] = 90.0
    hu[canal] = 15.0
    # descending aorta: contrast-filled like the left heart, behind the heart, unlabelled
    arch_top = 56.0 + rng.uniform(-6, 6)
    desc = np.array([24.0, 54.0]) + rng.uniform(-4, 4, 2)
    desc_radius = rng.uniform(10.0, 13.0)
    descending = (np.hypot(x - desc[0], y - desc[1]) <= desc_radius) & (z < arch_top)
    hu[descending] = left + rng.normal(0, 10)

    def paint(mask, value, level):
        label[mask] = value
        hu[mask] = level + rng.normal(0, 12)

    def jitter(values, amount):
        return np.asarray(values, float) + rng.uniform(-amount, amount, 3)

    def exponent():
        return rng.uniform(1.7, 2.8)

    # great vessels first (the chambers overwrite their roots); the aortic arch joins the descending aorta
    ao_root = jitter((2.0, 8.0, 16.0), 3.0)
    ao_top = np.array([ao_root[0] - 2.0, ao_root[1] + 6.0, arch_top])
    ao_radius = rng.uniform(14.0, 17.0)
    d_asc, _ = _tube(q, ao_root, ao_top)
    d_arch, _ = _tube(p, ao_top, np.array([desc[0], desc[1], arch_top]))
    paint((d_asc <= ao_radius) | (d_arch <= ao_radius * 0.9), _AO, left)
    pa_root = jitter((-10.0, -24.0, 12.0), 3.0)
    pa_top = jitter((-2.0, 0.0, 44.0), 4.0)
    pa_radius = rng.uniform(14.0, 17.0)
    d_trunk, _ = _tube(q, pa_root, pa_top)
    d_branch, _ = _tube(q, pa_top, pa_top + np.array([30.0, 14.0, -4.0]))
    paint((d_trunk <= pa_radius) | (d_branch <= pa_radius * 0.9), _PA, right)
    # chambers: superquadrics; the myocardium is a shell around the left ventricle
    size = rng.uniform(0.9, 1.1, 3)
    chambers = (
        (_RV, right, (-14.0, -22.0, -14.0), (18.0, 12.0, 20.0)),
        (_RA, right, (-30.0, 10.0, 18.0), (16.0, 16.0, 17.0)),
        (_LA, left, (12.0, 34.0, 22.0), (18.0, 13.0, 13.0)),
    )
    for value, level, where, radii in chambers:
        r = np.asarray(radii) * size * rng.uniform(0.85, 1.15, 3)
        paint(_superquadric(q, jitter(where, 3.0), r, exponent()) <= 1.0, value, level)
    lv_centre = jitter((18.0, 0.0, -12.0), 3.0)
    lv_radii = np.array([17.0, 15.0, 22.0]) * size * rng.uniform(0.85, 1.15, 3)
    lv_exp = exponent()
    thickness = rng.uniform(6.0, 10.0)
    paint(_superquadric(q, lv_centre, lv_radii + thickness, lv_exp) <= 1.0, _MYO, myo_level)
    paint(_superquadric(q, lv_centre, lv_radii, lv_exp) <= 1.0, _LV, left)

    # smooth multiplicative bias on the attenuation (HU + 1000), thick-slice blur, noise
    bias = 1.0 + 0.04 * _smooth_field(rng, shape, 3)
    hu = (hu + 1000.0) * bias - 1000.0
    sigma_mm = np.array([1.2, 1.2, 2.5]) * rng.uniform(0.8, 1.4)
    hu = ndimage.gaussian_filter(hu, sigma_mm / spacing_arr)
    hu += rng.normal(0.0, rng.uniform(15.0, 30.0), shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def write_synthetic_mmwhs(
    directory: str | Path,
    *,
    n_volumes: int = 20,
    shape: tuple[int, int, int] = (56, 56, 44),
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0),
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
