import pytest

from tests.sites import example_settings, site_of


@pytest.fixture
def settings() -> dict:
    """A fresh copy of the example stack's mailsite: settings, for a test to change."""
    return example_settings()


@pytest.fixture
def example_site():
    return site_of(example_settings())
