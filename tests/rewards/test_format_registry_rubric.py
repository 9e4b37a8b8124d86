"""Box extraction, the format verifier, the registry and the rubric (all in-process, no pool)."""

import time

import pytest

from temper.configs.load import ConfigError, load_config
from temper.configs.schema import RewardsConfig, RewardTerm
from temper.rewards.base import Verifier, VerifyRequest, VerifyResult
from temper.rewards.format import FormatParams, FormatVerifier, final_boxed
from temper.rewards.registry import BUILTIN_VERIFIERS, build_verifier, list_verifiers, resolve_verifier
from temper.rewards.rubric import Rubric, validate_rewards_config


@pytest.mark.parametrize(("text", "parts"), [
    (r"so \boxed{3}. Recheck: \boxed{5}", ["5"]),
    (r"$\boxed{1}, \boxed{2}$", ["1", "2"]),
    (r"x = \boxed{1}, y = \boxed{2}", ["1", "2"]),
    (r"\boxed{\frac{1}{2}}", [r"\frac{1}{2}"]),
    (r"\boxed 5", ["5"]),
    ("\\boxed{1}\n\n\\boxed{2}", ["2"]),
    (r"\boxed{12", None),  # truncated: no answer
    ("", None),
    (r"\fbox{7}", ["7"]),
    (r"\(\boxed{3}\) and \(\boxed{-1}\).", ["3", "-1"]),  # math delimiters join like `$`
    (r"\[\boxed{3}\] \[\boxed{-1}\]", ["3", "-1"]),
    (r"\boxed{3} or \boxed{-1}", ["3", "-1"]),
    (r"\(\boxed{3}\). Wait, no: \(\boxed{-1}\).", ["-1"]),  # prose does not
    (r"\boxed{3} for \boxed{4}", ["4"]),
    (r"\boxed $x$", None),  # used to trip an assert
    (r"\boxed{\{1\}} \boxed{\\}", [r"\{1\}", r"\\"]),
])
def test_final_boxed(text, parts):
    assert final_boxed(text) == parts


def test_box_scan_is_linear():
    """The math verifier's quick check scans responses outside any timeout: 10^5 unclosed boxes (once
    quadratic, minutes) must take well under a second."""
    start = time.perf_counter()
    assert final_boxed("\\boxed{" * 100_000) is None
    assert final_boxed("so \\boxed 5 " * 100_000 + "so \\boxed{7}") == ["7"]
    assert time.perf_counter() - start < 30  # a hang guard, not a speed claim: the quadratic scan took minutes


def test_format_verifier():
    v = FormatVerifier()
    assert v.verify(VerifyRequest(response=r"so \boxed{85}")).score == 1.0
    assert v.verify(VerifyRequest(response="85")).score == 0.0
    assert v.verify(VerifyRequest(response=r"\boxed{}")).score == 0.0
    tagged = FormatVerifier(FormatParams(pattern=r"<answer>.+</answer>"))
    assert tagged.verify(VerifyRequest(response="<answer>4</answer>")).score == 1.0


def _plain(request):
    return 1.0 if request.response == request.label else 0.0


class Echo(Verifier):
    def verify(self, request):
        return VerifyResult(0.5, {"seen": request.response})


def test_builtins_and_unknown_names():
    assert {"math", "format"} <= set(BUILTIN_VERIFIERS) and BUILTIN_VERIFIERS["code"] == "temper.rewards.code:CodeVerifier"
    assert resolve_verifier("format") is FormatVerifier
    assert resolve_verifier("format") is resolve_verifier("format")  # cached
    with pytest.raises(ValueError, match="known: .*format.*math"):
        resolve_verifier("no_such_verifier")


def test_module_attr_and_function_plugins():
    v = build_verifier(f"{__name__}:_plain", {})
    assert v.verify(VerifyRequest(response="a", label="a")).score == 1.0
    with pytest.raises(Exception, match="extra"):
        build_verifier(f"{__name__}:_plain", {"x": 1})
    assert build_verifier(f"{__name__}:Echo", {}).verify(VerifyRequest(response="r")).breakdown == {"seen": "r"}
    with pytest.raises(ValueError, match="cannot import"):
        resolve_verifier("no_such_module_xyz:thing")


def test_params_validated():
    from pydantic import ValidationError

    assert build_verifier("math", {"require_boxed": True}).params.require_boxed is True
    with pytest.raises(ValidationError):
        build_verifier("math", {"require_boxed": "maybe"})


def test_list_shows_sources_params_and_unavailable():
    infos = {i.name: i for i in list_verifiers()}
    assert infos["math"].source == "builtin"
    assert {"require_boxed", "allow_plain_number"} <= set(infos["math"].params)
    assert infos["math"].params["require_boxed"]["description"]
    code = infos["code"]
    assert code.error is None or "temper.rewards.code" in code.error  # listed even while rewards/code.py is missing


def test_rubric_weights_and_breakdown():
    cfg = RewardsConfig(terms=[RewardTerm(verifier="math"), RewardTerm(verifier="format", weight=0.1)])
    rubric = Rubric(cfg, processes=0)
    (res,) = rubric.score([VerifyRequest(response=r"\boxed{84}", label=85)])
    assert res.score == pytest.approx(0.1)  # 1.0 * 0 + 0.1 * 1
    assert res.breakdown["math"] == 0.0 and res.breakdown["format"] == 1.0
    assert res.breakdown["math/verdict"] == "wrong" and res.breakdown["format/formatted"] is True
    assert rubric.score([VerifyRequest(response=r"\boxed{85}", label=85)])[0].score == pytest.approx(1.1)


class Boom(Verifier):
    def verify(self, request):
        raise RuntimeError("bug in verifier")


def test_rubric_turns_exceptions_into_errors():
    cfg = RewardsConfig(terms=[RewardTerm(verifier=f"{__name__}:Boom", name="boom"), RewardTerm(verifier="format")])
    (res,) = Rubric(cfg, processes=0).score([VerifyRequest(response=r"\boxed{1}")])
    assert res.score == 1.0 and res.error == "boom: RuntimeError: bug in verifier"


def test_validate_names_the_field():
    bad = RewardsConfig(terms=[RewardTerm(verifier="math", params={"mode": "strict"})])
    with pytest.raises(ConfigError, match=r"rewards\.terms\[0\]\.params\.mode"):
        validate_rewards_config(bad)
    with pytest.raises(ConfigError, match=r"rewards\.terms\[0\]\.params\.require_boxed"):
        validate_rewards_config(RewardsConfig(terms=[RewardTerm(verifier="math", params={"require_boxed": []})]))
    with pytest.raises(ConfigError, match=r"rewards\.terms\[1\]\.verifier: unknown verifier"):
        validate_rewards_config(RewardsConfig(terms=[RewardTerm(verifier="math"), RewardTerm(verifier="nope")]))
    with pytest.raises(ConfigError, match="duplicate"):
        validate_rewards_config(RewardsConfig(terms=[RewardTerm(verifier="math"), RewardTerm(verifier="math")]))


def test_rubric_from_a_toml_config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        "[demo]\nenabled = true\n\n"
        "[[rewards.terms]]\nverifier = \"math\"\nparams = { require_boxed = true }\n\n"
        "[[rewards.terms]]\nverifier = \"format\"\nweight = 0.1\n"
    )
    rubric = Rubric(load_config(path).rewards, processes=0)
    assert rubric.score([VerifyRequest(response="85", label=85)])[0].score == 0.0  # not boxed
    assert rubric.score([VerifyRequest(response=r"\boxed{85}", label=85)])[0].score == pytest.approx(1.1)
