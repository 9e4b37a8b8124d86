"""The wheel a user installs: only `temper/` at its top level, and it works beside a project of the user's
own that has `configs/` and `rewards/` packages first on the path (what `ray job submit --working-dir .`
does). Editable installs hide this, so the wheel is built and installed for real into a fresh venv.

The fresh venv borrows the test venv's third-party packages through a path file (a real install of torch and
vLLM would take minutes and gigabytes); temper itself comes only from the wheel."""

import json
import os
import site
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO, VENV_BIN


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True, capture_output=True, timeout=300,
    )
    (path,) = out.glob("temper-*.whl")
    return path


def test_wheel_holds_only_the_temper_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"temper", "temper-0.1.0.dist-info"}
    for part in ("configs/schema.py", "configs/demo.toml", "configs/algorithms/tis.toml", "rollout/worker.py",
                 "learner/learner.py", "rewards/math_verifier.py", "environments/base.py",
                 "environments/agent/sessions.py", "demos/warm_start.py", "job.py", "cli.py",
                 # read as files and run as `python -c` (inside the sandbox, in the trusted checker)
                 "rewards/sandbox/harness.py", "rewards/sandbox/plain_data.py", "rewards/check_runner.py"):
        assert f"temper/{part}" in names


def test_installed_wheel_works_beside_a_users_own_configs_and_rewards(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (fresh_site,) = (venv / "lib").glob("python3*/site-packages")
    # Third-party packages from the test venv; its editable temper is not activated this way (a path line
    # adds a folder, and .pth files inside that folder are not read).
    (fresh_site / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [str(VENV_BIN / "uv"), "pip", "install", "--python", str(venv / "bin" / "python"), "--no-deps", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    project = tmp_path / "users-project"
    for pkg in ("configs", "rewards"):
        (project / pkg).mkdir(parents=True)
        (project / pkg / "__init__.py").write_text("USERS_OWN = True\n")
    (project / "configs" / "demo.toml").write_text((REPO / "configs" / "demo.toml").read_text())
    env = {**os.environ, "PYTHONPATH": str(project)}
    temper = str(venv / "bin" / "temper")

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, check=False, cwd=project, env=env, capture_output=True, text=True, timeout=120)

    listed = run(temper, "rewards", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    builtins = {v["name"]: v for v in json.loads(listed.stdout) if v["source"] == "builtin"}
    assert builtins["math"]["target"] == "temper.rewards.math_verifier:MathVerifier"
    assert builtins["math"]["error"] is None and builtins["code"]["error"] is None

    checked = run(temper, "check-config", "configs/demo.toml")
    assert checked.returncode == 0, checked.stderr
    assert '"name": "demo"' in checked.stdout

    code = "import temper.configs, configs; print(temper.configs.__file__); print(configs.USERS_OWN)"
    where = run(str(venv / "bin" / "python"), "-c", code)
    temper_file, users = where.stdout.split()
    assert temper_file.startswith(str(venv)) and users == "True"  # temper from the wheel, the user's own beside it
