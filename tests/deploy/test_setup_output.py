"""`make setup` tells what pip is doing instead of a silent minute (scripts/pip_progress.awk)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PIP_OUTPUT = """\
Obtaining file:///work/clients/python
  Installing build dependencies: started
Collecting grpcio==1.85.3 (from flowstate-client==0.1.0)
  Using cached grpcio-1.85.3-cp311-cp311-manylinux_2_17_x86_64.whl.metadata (3.8 kB)
Collecting protobuf==7.36.2 (from flowstate-client==0.1.0)
  Downloading protobuf-7.36.2-cp39-abi3-manylinux2014_x86_64.whl (322 kB)
Requirement already satisfied: pip in ./.venv/lib/python3.11/site-packages
Installing collected packages: protobuf, grpcio, flowstate-client
Successfully installed flowstate-client-0.1.0 grpcio-1.85.3 protobuf-7.36.2
"""


def test_pip_output_becomes_one_line_per_package_and_a_count() -> None:
    awk = shutil.which("awk")
    if awk is None:
        pytest.skip("awk is not installed")

    shown = subprocess.run(
        [awk, "-f", str(ROOT / "scripts" / "pip_progress.awk")],
        input=PIP_OUTPUT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    assert shown.stdout == (
        "  pip: collecting grpcio==1.85.3\n"
        "  pip: collecting protobuf==7.36.2\n"
        "  pip: installed 3 packages\n"
    )


def test_make_setup_announces_pip_and_filters_it() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMPS\)/venv:.*?^\t@touch \$@$", makefile, re.MULTILINE | re.DOTALL)

    assert recipe is not None
    assert "== pip: installing the server, the Python client and the dev tools" in recipe.group()
    assert "--quiet" not in recipe.group()
    assert "| awk -f scripts/pip_progress.awk" in recipe.group()
