"""A non-editable install carries what the package needs at run time (its pages)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = ("playground.html", "index.html", "docs.html")


def test_an_installed_package_finds_its_page_templates(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    for name in TEMPLATES:
        page = target / "embedding_gateway" / "templates" / name
        assert page.is_file() and not page.is_symlink()
    probe = ("import jinja2; from embedding_gateway.pages import TEMPLATES_DIR; "
             "print(TEMPLATES_DIR); "
             "env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR)); "
             f"[env.get_template(name) for name in {TEMPLATES!r}]")
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(target)}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(target))
