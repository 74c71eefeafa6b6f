"""Dataset readers (GlaS, MM-WHS CT), synthetic writers in the same on-disk formats, patch sampling."""

from reference_models.data.errors import DataError, UnknownLabelWarning

__all__ = ["DataError", "UnknownLabelWarning"]
