"""The studio page: a single page at ``/`` (upload a mix, A/B listen loudness-matched, see
what changed, download the master) served by the ingress, and the series it plots."""

from serving.studio.routes import add_studio_routes
from serving.studio.series import studio_series

__all__ = ["add_studio_routes", "studio_series"]
