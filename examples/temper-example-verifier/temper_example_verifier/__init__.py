"""A temper verifier plugin in under 20 lines: 1.0 when the response contains the label."""

from pydantic import BaseModel, ConfigDict

from temper.rewards.base import Verifier, VerifyRequest, VerifyResult


class ContainsLabel(Verifier):
    """1.0 when the response contains the label."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        case_sensitive: bool = False

    def verify(self, request: VerifyRequest) -> VerifyResult:
        text, label = request.response, str(request.label)
        if not self.params.case_sensitive:
            text, label = text.lower(), label.lower()
        return VerifyResult(score=float(label in text), breakdown={"found": label in text})
