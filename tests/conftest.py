import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def fixtures_dir():
    from pathlib import Path
    return Path(__file__).parent / "fixtures"
