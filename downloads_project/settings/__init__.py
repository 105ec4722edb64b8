"""Settings, read from the environment (see `.env.example` for every variable), one module
per concern. A module reads its own variables and imports by name the few settings of
another that it depends on; this package gathers them all, in that order.

With no variable set the service runs on its embedded default: SQLite, the Redis that
`manage.py runstack` starts, local-filesystem storage with signed expiring URLs, and the
synthetic origin. Each production part is switched on by its variable.
"""

from downloads_project.settings.base import *  # noqa: F403
from downloads_project.settings.celery import *  # noqa: F403
from downloads_project.settings.database import *  # noqa: F403
from downloads_project.settings.jobs import *  # noqa: F403
from downloads_project.settings.legacy import *  # noqa: F403
from downloads_project.settings.logging import *  # noqa: F403
from downloads_project.settings.notices import *  # noqa: F403
from downloads_project.settings.ops import *  # noqa: F403
from downloads_project.settings.origins import *  # noqa: F403
from downloads_project.settings.realtime import *  # noqa: F403
from downloads_project.settings.redis import *  # noqa: F403
from downloads_project.settings.security import *  # noqa: F403
from downloads_project.settings.storage import *  # noqa: F403
from downloads_project.settings.web import *  # noqa: F403
from downloads_project.settings.webhooks import *  # noqa: F403
