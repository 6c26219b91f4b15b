"""The import contracts of pyproject.toml: pages → train → core, inside train jobs → evaluation → trainer, no
import circles in core and train, streamlit only in pages, no entry-point imports.

They are run in the suite, so a change that breaks the layering fails CI; contracts that are broken on purpose
below show the check can fail."""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from core.settings import REPO_ROOT


def lint_imports(config, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "lint-imports"), str(config), "--no-cache"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def contracts() -> dict:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def covers(expression: str, module: str) -> bool:
    """Whether a contract's module ``expression`` (a name, or ``name.**`` for all below it) takes in ``module``."""
    if expression.endswith(".**"):
        return module.startswith(expression[: -len("**")])
    return module == expression or module.startswith(expression + ".")


def test_the_layering_contracts_are_kept():
    result = lint_imports(REPO_ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


def test_the_entry_point_and_circle_contracts_take_in_every_module_of_core_and_train():
    """import-linter checks a package named as a whole only for imports from outside it, so the entry-point
    contract names every module (by wildcard, sub-packages included), and the circle check starts at the top."""
    modules = set()
    for package in ("core", "train"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    modules -= {"core", "train"}  # the root packages themselves: a forbidden contract cannot name them for this
    sources = contracts()["no-entry-points"]["source_modules"]
    assert {module for module in modules if not any(covers(source, module) for source in sources)} == set()
    assert set(contracts()["no-circles"]["ancestors"]) == {"core", "train"}


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


def test_an_import_circle_is_reported(tmp_path):
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "first.py").write_text("def late():\n    from circle import second\n")  # a lazy import counts
    (package / "second.py").write_text("from circle import first\n")
    config = tmp_path / "circle.ini"
    config.write_text(
        textwrap.dedent("""
        [importlinter]
        root_package = circle

        [importlinter:contract:no-circles]
        name = no circles
        type = acyclic_siblings
        ancestors =
            circle
    """)
    )
    result = lint_imports(config, cwd=tmp_path)
    assert result.returncode != 0
    assert "No cycles are allowed in circle." in result.stdout
