"""Reading segmentation outputs from files, and pairing them by case across folders.

The command line (``selectivekit evaluate``) is built on these functions; they are public so that a script
can reuse the same pairing and checks. Their messages name parameters (``label_map``, ``channel_axis``) and
role keys (``pred``, ``label``, ``uncertainty``, ``probs``: the keys of `Case.files`); the command line
translates them to its flags.

Formats
-------
``.nii`` / ``.nii.gz`` (nibabel), ``.npy`` / ``.npz`` (NumPy, no pickles), ``.png`` / ``.bmp`` /
``.tif`` / ``.tiff`` (Pillow; a multi-page TIFF is read as a stack of shape (n_pages, H, W)). Other files in
a folder (``plans.json``, nnU-Net's ``.pkl``, hidden files) are ignored.

Pairing rule
------------
Every file gets a *case name*:

1. the format extension is removed (``case_7_pred.nii.gz`` -> ``case_7_pred``);
2. one role suffix is removed if the name ends with it, compared case-insensitively, longest first:
   ``_uncertainty``, ``_probs``, ``_label``, ``_prob``, ``_pred``, ``_unc``, ``_seg``, ``_gt``
   (``case_7_pred`` -> ``case_7``);
3. nnU-Net's channel suffix ``_0000`` is removed only when *every* file of that folder ends with it
   (the suffix is a property of a folder of network inputs, whereas a lone ``img_0000`` is a case name).

Files with the same case name in every folder form one case; cases are returned sorted by name. A file
without a partner in some folder is an error that lists every such file by name. Two files of one folder
with the same case name are an error, except in one situation: when one folder is given for both the
predictions and the probability maps (nnU-Net writes ``case.nii.gz`` and ``case.npz`` side by side), the
predictions are taken from the image files and the probabilities from the ``.npy``/``.npz`` files; and
when a folder given for the probability maps alone holds an image and an array file for one case (nnU-Net's
``case.nii.gz`` beside ``case.npz``), the array file is taken; in an nnU-Net folder (below) given for
another role alone, the image file is taken.

Folders as the tools write them
-------------------------------
[`folder_layout`][selectivekit.io.folder_layout] recognises two layouts besides plain folders of files:

- ``"nnunet"``: a folder written by ``nnUNetv2_predict`` (it holds ``predict_from_raw_data_args.json``, or
  ``plans.json`` and ``dataset.json``) or a fold's ``validation`` folder (``plans.json`` and
  ``dataset.json`` two levels up, beside ``fold_0``, ...). Its ``.npz`` probabilities are stored in
  nnU-Net's array order: classes first, then the spatial axes as nnU-Net's reader returned them, i.e.
  (c, z, y, x) for NIfTI, which nibabel reads as (x, y, z); a 2D image gets an extra axis of size 1,
  (c, 1, H, W). [`load_case`][selectivekit.io.load_case] undoes both by default.
- ``"monai"``: MONAI's ``SaveImage`` with ``separate_folder=True`` (its default): no file at the top, one
  subfolder per case named after the input file, holding ``<case>_<postfix>.<ext>`` (postfix ``trans`` by
  default). The case name is the subfolder's name (a role suffix and the folder-wide ``_0000`` removed as
  above). Probability maps written this way are NIfTI files with the classes on the last axis.

Modules
-------
Every public name is imported here from the private module of its concern: ``_names`` (extensions, role
suffixes, [`case_name`][selectivekit.io.case_name]), ``_pairing`` ([`pair_files`][selectivekit.io.pair_files],
[`folder_layout`][selectivekit.io.folder_layout]), ``_readers`` ([`read_image`][selectivekit.io.read_image]
and the size checks of each format), ``_labels`` ([`parse_label_map`][selectivekit.io.parse_label_map] and the
reading of label files), ``_regions`` (overlapping regions such as BraTS',
[`parse_regions`][selectivekit.io.parse_regions] and [`region_images`][selectivekit.io.region_images]) and
``_cases`` ([`read_case`][selectivekit.io.read_case], [`load_case`][selectivekit.io.load_case]).
"""

from ._cases import AFFINE_TOLERANCE, CaseArrays, load_case, read_case
from ._labels import parse_label_map
from ._names import (
    ARRAY_EXTENSIONS,
    EXTENSIONS,
    IMAGE_EXTENSIONS,
    ROLE_SUFFIXES,
    case_name,
)
from ._names import (
    NNUNET_CHANNEL_SUFFIX as NNUNET_CHANNEL_SUFFIX,  # public before the split, not in __all__
)
from ._pairing import LAYOUTS, NNUNET_MARKERS, Case, folder_layout, pair_files
from ._readers import DEFAULT_MAX_VOXELS, read_image
from ._regions import parse_regions, region_images

__all__ = [
    "AFFINE_TOLERANCE",
    "ARRAY_EXTENSIONS",
    "DEFAULT_MAX_VOXELS",
    "EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "NNUNET_MARKERS",
    "ROLE_SUFFIXES",
    "Case",
    "CaseArrays",
    "case_name",
    "folder_layout",
    "load_case",
    "pair_files",
    "parse_label_map",
    "parse_regions",
    "read_case",
    "read_image",
    "region_images",
]
