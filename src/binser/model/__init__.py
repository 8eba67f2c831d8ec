"""A trained binser system (see :mod:`binser.model.predict`)."""
from __future__ import annotations

from .predict import *  # noqa: F401,F403
from .predict import _check_frontend, _cv_summary  # noqa: F401
