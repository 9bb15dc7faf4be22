"""A scenario file: workload, provider behaviour and sync limits per lane (the keys are a contract).

```toml
duration_h = 24
seed = 7
tick_s = 60
fixed_escalation_h = 1          # when fixed_escalation flips a job: this long before its deadline

[[lanes]]
provider = "openai"             # the provider kind: openai | anthropic
model = "gpt-4o-mini"
jobs_per_hour = 2000            # or pattern = [hourly rates, repeated]
deadline_h = [4, 24]            # a number, or [min, max] drawn uniformly
input_tokens = 800
output_tokens = 200
cached_share = 0.2              # share of input tokens read from the prompt cache
turnaround = { dist = "lognormal", median_min = 7, p90_min = 60 }   # or { dist = "empirical", minutes = [...] }
stalls = [{ start_h = 10, duration_h = 3 }]   # batches make no progress meanwhile
expire_share = 0.0              # share of batches that expire at the completion window, no results
sync_latency = { median_s = 2, p99_s = 20 }
sync_rpm = 3000
sync_concurrency = 64
flex = false
flex_unavailable_share = 0.0    # share of flex calls refused (429), then sent to standard sync
siblings = [1]                  # lanes (indexes in this list) serving the same model, in order of
                                # preference: batchshift moves this lane's waiting jobs there when it lags
```

A scenario with sibling lanes also reports ``batchshift_no_siblings``: the same run without them.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# z of the 90th and 99th percentiles of a standard normal.
Z90 = 1.2815515655446004
Z99 = 2.3263478740408408


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogNormalTurnaround(_Strict):
    dist: Literal["lognormal"]
    median_min: float = Field(gt=0)
    p90_min: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LogNormalTurnaround:
        if self.p90_min < self.median_min:
            raise ValueError("p90_min must be at least median_min")
        return self

    @property
    def sigma(self) -> float:
        return math.log(self.p90_min / self.median_min) / Z90


class EmpiricalTurnaround(_Strict):
    dist: Literal["empirical"]
    minutes: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)


class Stall(_Strict):
    start_h: float = Field(ge=0)
    duration_h: float = Field(gt=0)


class SyncLatency(_Strict):
    median_s: float = Field(gt=0)
    p99_s: float = Field(gt=0)

    @property
    def sigma(self) -> float:
        return max(math.log(self.p99_s / self.median_s), 0.0) / Z99


class LaneScenario(_Strict):
    provider: Literal["openai", "anthropic"]
    model: str
    jobs_per_hour: float | None = Field(default=None, ge=0)
    pattern: list[Annotated[float, Field(ge=0)]] | None = None
    deadline_h: float | tuple[float, float]
    input_tokens: int = Field(default=1000, ge=0)
    output_tokens: int = Field(default=200, ge=0)
    cached_share: float = Field(default=0.0, ge=0, le=1)
    turnaround: Annotated[LogNormalTurnaround | EmpiricalTurnaround, Field(discriminator="dist")]
    stalls: list[Stall] = []
    expire_share: float = Field(default=0.0, ge=0, le=1)
    sync_latency: SyncLatency = SyncLatency(median_s=2, p99_s=20)
    sync_rpm: int | None = Field(default=None, gt=0)
    sync_concurrency: int = Field(default=64, gt=0)
    flex: bool = False
    flex_unavailable_share: float = Field(default=0.0, ge=0, le=1)
    siblings: list[Annotated[int, Field(ge=0)]] = []

    @model_validator(mode="after")
    def _one_rate(self) -> LaneScenario:
        if (self.jobs_per_hour is None) == (self.pattern is None):
            raise ValueError("give exactly one of jobs_per_hour and pattern")
        if isinstance(self.deadline_h, tuple) and not 0 < self.deadline_h[0] <= self.deadline_h[1]:
            raise ValueError("deadline_h [min, max] needs 0 < min <= max")
        if not isinstance(self.deadline_h, tuple) and self.deadline_h <= 0:
            raise ValueError("deadline_h must be positive")
        return self

    def rate_per_s(self, hour: int) -> float:
        """Arrivals per second in hour ``hour`` of the run."""
        if self.pattern is not None:
            return self.pattern[hour % len(self.pattern)] / 3600 if self.pattern else 0.0
        return (self.jobs_per_hour or 0.0) / 3600


class Scenario(_Strict):
    duration_h: float = Field(gt=0)
    seed: int = 0
    tick_s: float = Field(default=60.0, gt=0)
    fixed_escalation_h: float = Field(default=1.0, gt=0)
    lanes: list[LaneScenario] = Field(min_length=1)

    @model_validator(mode="after")
    def _siblings_exist(self) -> Scenario:
        for i, lane in enumerate(self.lanes):
            for other in lane.siblings:
                if other == i or other >= len(self.lanes):
                    raise ValueError(f"lanes[{i}].siblings: {other} is not another lane's index")
        return self

    @property
    def has_siblings(self) -> bool:
        return any(lane.siblings for lane in self.lanes)


class ScenarioError(Exception):
    """Raised when a scenario file is missing or invalid; the message names the file and the key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def load(path: Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    try:
        return Scenario.model_validate(tomllib.loads(path.read_text()))
    except FileNotFoundError:
        raise ScenarioError(f"scenario not found: {path}") from None
    except OSError as exc:  # a directory, a file it may not read
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path.name}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ScenarioError(f"{path.name}: {problems}") from None
