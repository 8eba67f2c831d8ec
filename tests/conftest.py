"""Shared fixtures. EMOVO is read from ../shared/data/emovo (never copied into the repo)."""
from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EMOVO_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "emovo"


@pytest.fixture(scope="session")
def emovo_root() -> Path:
    """The EMOVO corpus folder; skips the test with a message where it is absent."""
    if not (EMOVO_ROOT / "f1").is_dir():
        pytest.skip(f"EMOVO corpus not found at {EMOVO_ROOT} (it lives in ../shared/data/emovo "
                    "beside the project; tests that need it are skipped)")
    return EMOVO_ROOT
