"""The example plugin package: a real `pip install -e`, then used by name in a fresh process."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "examples", "temper-example-verifier")


def _pip_install_editable():
    base = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "-e", PACKAGE]
    out = subprocess.run(base, check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_plugin_installs_and_is_used_by_name(tmp_path):
    _pip_install_editable()
    config = tmp_path / "run.toml"
    config.write_text(
        '[demo]\nenabled = true\n\n[[rewards.terms]]\nverifier = "contains_label"\n'
        "params = { case_sensitive = true }\n"
    )
    script = textwrap.dedent(f"""
        from temper.configs.load import load_config
        from temper.rewards.base import VerifyRequest
        from temper.rewards.registry import build_verifier, list_verifiers
        from temper.rewards.rubric import Rubric

        v = build_verifier("contains_label", {{}})
        assert v.verify(VerifyRequest(response="It is PARIS.", label="Paris")).score == 1.0
        info = {{i.name: i for i in list_verifiers()}}["contains_label"]
        assert info.source == "entry point (temper-example-verifier)", info
        assert "case_sensitive" in info.params
        rubric = Rubric(load_config({str(config)!r}).rewards, processes=0)
        assert rubric.score([VerifyRequest(response="It is PARIS.", label="Paris")])[0].score == 0.0
        assert rubric.score([VerifyRequest(response="It is Paris.", label="Paris")])[0].breakdown == {{
            "contains_label": 1.0, "contains_label/found": True}}
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    cli = subprocess.run([sys.executable, "-m", "temper.rewards.cli", "score", "--verifier", "contains_label",
                          "--response", "Paris!", "--label", "Paris", "--workers", "1", "--format", "json"],
                         check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert cli.returncode == 0 and '"reward": 1.0' in cli.stdout, cli.stderr
