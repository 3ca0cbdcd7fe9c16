"""Shared by the network tests: two torch threads, a seeded small network, its box/text-less twin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from models.build import build_model
from models.config import get_config
from models.modeling.network import Sam3D

#: The small configuration without the paper's added branches (upstream's prompt layout).
PLAIN = get_config("small").with_changes(name="small-plain", text_dim=None, box_prompt=False)


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    """The test machine's two cores are shared; keep torch from oversubscribing them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def small() -> Sam3D:
    torch.manual_seed(0)
    return build_model("small").eval()
