"""Private helpers shared by every module: the only underscore package other modules import from.

Namespace and device, dtype choice, bincount and scatter-max, bit views, conversion to NumPy, argument
checks, the validated instance inputs, what the framework adapters share, the HTML page of a report, output
written whole or not at all, signals held while a step must not be cut in two, and the threads a step may
use.
Nothing here is public API; the names may change at any time. Each submodule's ``__all__`` is re-exported
here.
"""

from . import (
    array_api,
    atomic,
    frameworks,
    html_report,
    instances,
    probabilities,
    signals,
    threads,
    validation,
)
from .array_api import *  # noqa: F403
from .atomic import *  # noqa: F403
from .frameworks import *  # noqa: F403
from .html_report import *  # noqa: F403
from .instances import *  # noqa: F403
from .probabilities import *  # noqa: F403
from .signals import *  # noqa: F403
from .threads import *  # noqa: F403
from .validation import *  # noqa: F403

__all__ = sorted(
    [
        *array_api.__all__,
        *atomic.__all__,
        *frameworks.__all__,
        *html_report.__all__,
        *instances.__all__,
        *probabilities.__all__,
        *signals.__all__,
        *threads.__all__,
        *validation.__all__,
    ]
)
