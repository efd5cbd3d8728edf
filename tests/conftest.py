"""Shared fixtures: every test gets its own cache directory and no API key."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LVLMVA_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    torch.manual_seed(0)
