import pytest

from tests.activities.state_helpers import settings_for


@pytest.fixture
def settings(tmp_path):
    return settings_for(tmp_path)
