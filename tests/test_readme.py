"""The README and docs/ as a newcomer meets them: the README is short, its Python snippets run, every
link of the README and of docs/ resolves, and ``import bagrepro`` is a front door that loads no torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_is_short():
    # 12 KiB of prose plus the table of attribution methods (about 4 KiB: one row per method)
    assert len(README.read_bytes()) <= 16 * 1024


def test_the_readme_lists_every_attribution_method_as_the_registry_has_it():
    """The method table is made by `run_all.py --methods-table`: run it again after adding a method."""
    from bagrepro.harness.registry import methods_markdown

    assert methods_markdown() in README.read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: broken link {target}"


SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_every_readme_python_snippet_runs(index, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", SNIPPETS[index]], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_import_bagrepro_is_a_lazy_front_door():
    code = ("import sys, bagrepro, pydoc\n"
            "assert 'torch' not in sys.modules, 'import bagrepro loaded torch'\n"
            "text = pydoc.render_doc(bagrepro, renderer=pydoc.plaintext)\n"
            "missing = [n for n in bagrepro.__all__ if n not in text]\n"
            "assert not missing, missing\n"
            "assert callable(bagrepro.dense_heatmaps) and callable(bagrepro.create_model)\n"
            "print(len(bagrepro.__all__))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) >= 8
