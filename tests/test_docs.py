"""The Python examples in docs/ run as they are."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
BLOCKS = [(doc.name, i, code) for doc in DOCS
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S))]


@pytest.mark.parametrize("name, index, code", BLOCKS, ids=[f"{n}-{i}" for n, i, _ in BLOCKS])
def test_doc_example_runs(name: str, index: int, code: str):
    exec(compile(code, f"{name}[{index}]", "exec"), {})
