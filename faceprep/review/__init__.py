"""``faceprep review DST``: look at a dataset in the browser, see why faces were rejected, overrule it.

>>> from faceprep.review import serve, decisions, effective_kept
>>> serve("faces/")                      # http://127.0.0.1:8765/ until Ctrl-C
>>> decisions("faces/")                  # {("party/img.jpg", 0): "reject", ...}
>>> effective_kept("faces/")             # kept - rejected in review + kept in review (rescued)

Decisions are appended to ``DST/review.jsonl``; thumbnails are cached in ``DST/.faceprep-review/``.
"""

from faceprep.review.apply import Materialised, decisions, effective_kept, materialise_rescued
from faceprep.review.server import ReviewApp, ReviewServer, make_server, serve
from faceprep.review.store import REVIEW, DatasetReader, FolderReader, open_reader, read_decisions

__all__ = [
    "REVIEW",
    "DatasetReader",
    "FolderReader",
    "Materialised",
    "ReviewApp",
    "ReviewServer",
    "decisions",
    "effective_kept",
    "make_server",
    "materialise_rescued",
    "open_reader",
    "read_decisions",
    "serve",
]
