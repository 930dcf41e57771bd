"""The endpoint's side of the feedback loop: which requests it served, to whom, and one rating for each.

`POST /v1/feedback {"request_id", "rating": 1-5, "comment"?, "correction"?}` is accepted only for a request
this endpoint logged (404 otherwise), by the token that made it (403), once (409), with a comment of at most
`requestlog.MAX_COMMENT_CHARS` characters and a correction (the answer that should have been served) of at
most `requestlog.MAX_CORRECTION_CHARS` (400), both redacted like the request log. What it rates is the answer
the server logged for that id: a client cannot rate text of its own making. A correction is the client's
own text by design; it is only ever exported as the preferred answer against the logged one, for the
conversation the server logged.

The served ids live in a bounded index (`max_index`, newest kept), rebuilt from the request log the first
time a proxy process rates against it, so a restart does not forget what was served.

Run as: a library; `tuneline.serving.proxy` answers the route with it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tuneline.serving.openai_api import ApiError
from tuneline.serving.requestlog import (
    RATINGS_FILE,
    AlreadyRated,
    FeedbackError,
    RatingStore,
    RequestLogger,
    read_requests,
)


class FeedbackDesk:
    def __init__(self, max_index: int = 50_000) -> None:
        self.max_index = max_index
        self._served: dict[Path, OrderedDict[str, str]] = {}
        self._stores: dict[Path, RatingStore] = {}
        self._lock = threading.Lock()

    def _index(self, logger: RequestLogger) -> OrderedDict[str, str]:
        with self._lock:
            if logger.path not in self._served:
                index: OrderedDict[str, str] = OrderedDict()
                try:
                    for req in read_requests(logger.path):
                        index[req.id] = req.by
                        if len(index) > self.max_index:
                            index.popitem(last=False)
                except FeedbackError:
                    pass  # a damaged old log: only what this process serves can be rated
                self._served[logger.path] = index
            return self._served[logger.path]

    def served(self, logger: RequestLogger, request_id: str, by: str) -> None:
        index = self._index(logger)
        with self._lock:
            index[request_id] = by
            if len(index) > self.max_index:
                index.popitem(last=False)

    def rate(self, logger: RequestLogger, body: bytes, by: str) -> dict[str, Any]:
        try:
            req = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            raise ApiError(f"body line {exc.lineno}: invalid JSON: {exc.msg}") from None
        if not isinstance(req, dict):
            raise ApiError("the body must be a JSON object")
        request_id = req.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise ApiError("field 'request_id' must be the id a generation answer returned")
        maker = self._index(logger).get(request_id)
        if maker is None:
            raise ApiError(f"no request {request_id!r} was served here (or it is older than the last "
                           f"{self.max_index} requests)", status=404)
        if maker != by:
            raise ApiError("a request can only be rated with the token that made it", status=403)
        comment = req.get("comment", "")
        if not isinstance(comment, str):
            raise ApiError("field 'comment' must be a string")
        correction = req.get("correction", "")
        if not isinstance(correction, str):
            raise ApiError("field 'correction' must be a string: the answer that should have been served")
        path = logger.path.with_name(RATINGS_FILE)
        with self._lock:
            store = self._stores.setdefault(path, RatingStore(path))
        try:
            store.rate(request_id, req.get("rating"), comment, once=True, by=by, correction=correction)
        except AlreadyRated as exc:
            raise ApiError(str(exc), status=409) from None
        except FeedbackError as exc:
            raise ApiError(str(exc)) from None
        return {"rated": request_id, "rating": req["rating"], **({"corrected": True} if correction else {})}
