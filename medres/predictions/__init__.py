"""The prediction folder: its layout (:mod:`~medres.predictions.layout`) and its typed
records (:mod:`~medres.predictions.records`).

Everything that ``medres predict`` writes, and everything that reads it back (resume,
``medres report``, ``medres evaluate``, the CLI), goes through these two modules; nobody
else spells a file name of the folder or reads its JSON by string key.
"""

from medres.predictions.layout import MemberFolder, RunFolder, ScanFolder, member_folder_name
from medres.predictions.records import (
    Lesion,
    MemberLesionsRecord,
    ModelProvenance,
    RunRecord,
    ScanRecord,
    ScanResult,
    ScanStatus,
)

__all__ = [
    "Lesion",
    "MemberFolder",
    "MemberLesionsRecord",
    "ModelProvenance",
    "RunFolder",
    "RunRecord",
    "ScanFolder",
    "ScanRecord",
    "ScanResult",
    "ScanStatus",
    "member_folder_name",
]
