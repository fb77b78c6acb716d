"""`make lint`'s import contracts hold on the tree and break on each kind of wrong import.

Each case copies our packages into a temporary directory, adds one import that
CONTRIBUTING.md forbids, and runs lint-imports with the project's own contracts on the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "services": REPO / "services",
    "ap_cli": REPO / "ap_cli",
    "devtools": REPO / "devtools",
    "agentplatform": REPO / "sdk" / "python" / "src" / "agentplatform",
}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def copy_tree(tmp_path: Path) -> Path:
    """Copy the packages and the contracts (pyproject.toml) into a fresh directory."""
    for name, source in PACKAGES.items():
        shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the copy, which shadows the installed packages."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    """The unchanged tree passes: three contracts kept."""
    result = lint_imports(copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        (
            "services/control_plane/wrong.py",
            "import services.worker.execution",
            "Services never import each other",
        ),
        (
            "services/rpc/wrong.py",
            "from services.vault import crypto",
            "Plumbing (services.rpc, services.migrate) imports no service",
        ),
        (
            "agentplatform/wrong.py",
            "import ap_cli.render",
            "The SDK imports no server code",
        ),
        (
            "agentplatform/wrong.py",
            "import services.rpc.names",
            "The SDK imports no server code",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    """Adding the import makes lint-imports fail and name the contract it broke."""
    root = copy_tree(tmp_path)
    (root / module).write_text(f'"""A deliberately wrong import."""\n\n{wrong_import}\n')
    result = lint_imports(root)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout
