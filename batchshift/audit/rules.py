"""The user's word on what each feature tolerates: a TOML file of rules, the first match wins.

```toml
[[rules]]
feature = "nightly-*"     # a shell-style pattern on the feature name
tolerance_h = 12          # how long its callers can wait for an answer; 0: must stay synchronous
```

A rule overrides the signals the audit reads from the traffic: a feature with a tolerance of more
than zero hours is eligible, one with zero is not; the reason names the rule.
"""

from __future__ import annotations

import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchshift.audit.errors import InvalidRules


class Rule(BaseModel):
    """One rule: a feature pattern and how many hours its callers tolerate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: str = Field(min_length=1)
    tolerance_h: float = Field(ge=0)

    def matches(self, feature: str) -> bool:
        return fnmatchcase(feature, self.feature)


class Rules(BaseModel):
    """The rules file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = []

    def for_feature(self, feature: str) -> Rule | None:
        """The first rule whose pattern matches ``feature``."""
        return next((rule for rule in self.rules if rule.matches(feature)), None)


def load(path: Path) -> Rules:
    """Read and validate a rules file; InvalidRules names the file and the bad key."""
    try:
        return Rules.model_validate(tomllib.loads(path.read_text()))
    except FileNotFoundError:
        raise InvalidRules(f"rules file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRules(f"{path.name}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise InvalidRules(f"{path.name}: {problems}") from None
