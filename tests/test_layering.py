"""The import contract of .importlinter: pages → train → core, streamlit only in pages, no entry-point imports.

It is run in the suite, so a change that breaks the layering fails CI; a contract that is broken on purpose
below shows the check can fail."""

import configparser
import subprocess
import sys
import textwrap
from pathlib import Path

from core.settings import REPO_ROOT


def lint_imports(config) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "lint-imports"), "--config", str(config), "--no-cache"]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_the_layering_contracts_are_kept():
    result = lint_imports(REPO_ROOT / ".importlinter")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_the_entry_point_contract_names_every_library_module():
    """import-linter checks a package named as a whole only for imports from outside it, so the contract lists
    each module; a new module of core or train must be added to it."""
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".importlinter")
    listed = set(config["importlinter:contract:no-entry-points"]["source_modules"].split())
    modules = {
        f"{path.parent.name}.{path.stem}"
        for package in ("core", "train")
        for path in (REPO_ROOT / package).glob("*.py")
        if not path.stem.startswith("__")
    }
    assert modules - listed == set()


def test_a_broken_contract_is_reported(tmp_path):
    config = tmp_path / "inverted.ini"
    config.write_text(
        textwrap.dedent("""
        [importlinter]
        root_packages =
            core
            train

        [importlinter:contract:inverted]
        name = core above train (false: train imports core)
        type = layers
        layers =
            core
            train
    """)
    )
    result = lint_imports(config)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
