"""The layer order is a contract: import-linter's ``layers`` contract in pyproject.toml.

``lint-imports`` (import-linter, in the ``dev`` extra) checks that no module imports a layer
above its own, directly or through others, and, the contract being exhaustive, that every
module of compdiff is listed. The contract is run here, so ``make test`` runs it. Two more
tests show it is live (a planted upward import and an unlisted module both break it) and
that docs/architecture.md lists the same layers.
"""
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "compdiff"


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.is_file(), "lint-imports is missing: pip install -e '.[dev]' (import-linter)"
    env = {"PATH": str(exe.parent), "PYTHONPATH": str(pythonpath or ROOT / "src")}
    return subprocess.run([str(exe), "--no-cache", str(cwd / "pyproject.toml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def contract_layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    assert contract["type"] == "layers" and contract["exhaustive"] and not contract.get("ignore_imports")
    return contract["layers"]


def test_the_layer_contract_holds():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout[run.stdout.find("Broken contracts"):] + run.stderr


def test_the_contract_catches_an_upward_import_and_an_unlisted_module(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "src" / "compdiff", ignore=shutil.ignore_patterns("weights", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    scene = tmp_path / "src" / "compdiff" / "world" / "scene.py"
    scene.write_text(scene.read_text() + "\nfrom compdiff.eval import judge  # planted: world -> eval\n")
    (tmp_path / "src" / "compdiff" / "helpers.py").write_text("X = 1\n")
    run = lint_imports(tmp_path, tmp_path / "src")
    assert run.returncode != 0
    assert "compdiff.world is not allowed to import compdiff.eval" in run.stdout
    assert "compdiff.world.scene -> compdiff.eval" in run.stdout
    assert "- compdiff.helpers" in run.stdout and "not listed as layers" in run.stdout


def test_the_architecture_page_lists_the_contracts_layers():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers: pyproject.toml -->\n```\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no layers block"
    assert block.group(1).splitlines() == contract_layers()
