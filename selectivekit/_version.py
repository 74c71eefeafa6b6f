"""The version of selectivekit: the one place it is written.

``pyproject.toml`` declares the version dynamic and setuptools reads this assignment when it builds, so the
package metadata (``importlib.metadata.version("selectivekit")``), ``selectivekit.__version__``,
``selectivekit --version`` and the reports' ``selectivekit_version`` all come from this line. A version
read from the installed metadata instead would be wrong in a source checkout run from ``PYTHONPATH`` and
stale in an editable install made before the last bump; this file is right in both.
"""

__version__ = "0.6.0"
