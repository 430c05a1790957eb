"""The two workloads the CLI composes (projector, feature server): one import seam.

At run time they are the installed packages `ofp_projector` / `ofp_server`.
The editable install maps those names onto `services/<dir>` with an import
hook that mypy cannot follow, so the type checker reads the same files through
`mypy_path = services` under their directory names instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feature_server.server import FeatureServer, create_server
    from projector import file_bus
    from projector.projector import Projector, Totals
else:
    from ofp_projector import file_bus
    from ofp_projector.projector import Projector, Totals
    from ofp_server.server import FeatureServer, create_server

__all__ = ["FeatureServer", "Projector", "Totals", "create_server", "file_bus"]
