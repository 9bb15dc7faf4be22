"""The API's JSON response class: orjson, because job views and bulk answers are on the hot path.

FastAPI deprecated its own ``ORJSONResponse`` in favour of typed return values; our routes return
plain dicts built by ``JobRecord.view`` (no per-item pydantic pass), so we keep one small class here.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JsonResponse(JSONResponse):
    """A JSON response rendered with orjson."""

    def render(self, content: Any) -> bytes:
        return self.render_content(content)

    @staticmethod
    def render_content(content: Any) -> bytes:
        """The bytes ``render`` sends, for code that answers without a Response object."""
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
