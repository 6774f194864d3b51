"""Shared test set-up: CPU only, float32, paths to the reference fixtures copied from the original code."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

DATA = pathlib.Path(__file__).parent / "data"
FIXTURES = DATA / "fixtures"
MEDIA = DATA / "media"


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES


@pytest.fixture(scope="session")
def media_dir():
    return MEDIA
