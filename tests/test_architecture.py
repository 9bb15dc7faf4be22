"""The import-linter contracts in pyproject.toml: the real tree keeps them, and each can break.

The guards build a throwaway tree of empty packages named as ours, check it against the same
contracts, then add one forbidden import and see ``lint-imports`` refuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("api", "batchshift", "config", "emulator", "scheduler", "workers")
# The scheduler's layers, bottom up, and the tick's steps in them: the service imports the steps,
# the steps import only the tick's own module.
LAYERS = ("ledger", "costs", "planning", "slo")
STEPS = ("ledger.retention", "slo.tracker", "planning.sync_dispatch", "planning.webhook_dispatch")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Empty packages named as ours, with the layering's allowed imports and the tick's wiring."""
    for name in (*PACKAGES, *(f"scheduler/{layer}" for layer in LAYERS)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "scheduler" / "service.py").write_text(
        "".join(f"import scheduler.{module}\n" for module in (*STEPS, "tick"))
    )
    (tmp_path / "scheduler" / "intake.py").write_text("import scheduler.slo\nimport scheduler.costs\n")
    (tmp_path / "scheduler" / "provider_events.py").write_text("import scheduler.planning\n")
    (tmp_path / "scheduler" / "tick.py").write_text("")
    (tmp_path / "scheduler" / "compat").mkdir()  # the client batches, above intake
    (tmp_path / "scheduler" / "compat" / "__init__.py").write_text("import scheduler.intake\n")
    for module in STEPS:
        (tmp_path / "scheduler" / f"{module.replace('.', '/')}.py").write_text("import scheduler.tick\n")
    for below, above in zip(LAYERS, LAYERS[1:], strict=False):  # each layer uses the one below it
        (tmp_path / "scheduler" / above / "uses.py").write_text(f"import scheduler.{below}\n")
    (tmp_path / "scheduler" / "policy.py").write_text("import config\n")
    (tmp_path / "workers" / "tasks.py").write_text("import config\nimport scheduler\n")
    (tmp_path / "api" / "app.py").write_text("import config\nimport scheduler\n")
    (tmp_path / "batchshift" / "cli.py").write_text("import api\nimport emulator\nimport workers\n")
    return tmp_path


def test_the_code_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_tree_shaped_like_ours_keeps_them(tree: Path):
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("emulator/server.py", "import scheduler\n", "the emulator is a product of its own"),
        ("emulator/state.py", "import config\n", "the emulator is a product of its own"),
        ("scheduler/ledger/ledger.py", "import workers\n", "config <- scheduler <- workers"),
        ("config/settings.py", "import scheduler\n", "config <- scheduler <- workers"),
        ("workers/http.py", "import api\n", "config <- scheduler <- workers"),
        ("scheduler/policy.py", "import scheduler.service\n", "every routing and backoff decision is pure"),
        ("api/jobs.py", "import batchshift\n", "config <- scheduler <- workers"),
        ("workers/cycle.py", "import workers.tasks\n", None),
        # A tick step reaching back into the service that runs it (issue 15's circle).
        ("scheduler/slo/tracker.py", "import scheduler.tick\nimport scheduler.service\n", "no cycles"),
        # The ledger reaching up into the SLO tracker.
        ("scheduler/ledger/keys.py", "import scheduler.slo\n", "inside the scheduler"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tree: Path, module: str, source: str, contract: str | None):
    if contract is None:  # a cycle between siblings: tasks -> cycle -> tasks
        (tree / "workers" / "tasks.py").write_text("import config\nimport scheduler\nimport workers.cycle\n")
        contract = "no cycles between the subpackages of any package"
    (tree / module).write_text(source)
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken
