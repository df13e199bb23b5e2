"""Fixtures of the remote-sensing tests."""

import pytest

from rs_rasters import s1_pair, s2_stack


@pytest.fixture
def scene(tmp_path):
    s2_stack(tmp_path / "s2")
    s1_pair(tmp_path / "s1")
    return tmp_path
