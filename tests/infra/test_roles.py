"""The process role comes from the environment (DOWNLOADS_PROCESS_ROLE), as the settings
module does: the ASGI entry point names its process a web process before the settings
load, unless the environment already names a role."""

import os
import subprocess
import sys

from infra import roles
from tests.support.stack import ROOT

READ_ROLE = (
    "import os, sys\n"
    "import downloads_project.asgi\n"
    "from infra import roles\n"
    "print(os.environ.get(roles.ROLE_VARIABLE), roles.is_web())\n"
)


def role_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != roles.ROLE_VARIABLE}
    return {**env, "DJANGO_SETTINGS_MODULE": "downloads_project.settings", **extra}


def test_the_asgi_entry_point_makes_its_process_a_web_process() -> None:
    read = subprocess.run(
        [sys.executable, "-c", READ_ROLE],
        env=role_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert read.stdout.split() == ["web", "True"], read.stderr


def test_a_role_the_environment_names_stands(monkeypatch) -> None:
    monkeypatch.setenv(roles.ROLE_VARIABLE, "worker")
    assert not roles.is_web()
    monkeypatch.setenv(roles.ROLE_VARIABLE, "web")
    assert roles.is_web()
    monkeypatch.delenv(roles.ROLE_VARIABLE)
    assert not roles.is_web()
