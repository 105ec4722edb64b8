"""How the service's processes are started: their command lines (processes.py), the private
Redis of the embedded default (embedded.py), the container's health check (healthcheck.py)
and `manage.py runstack`, which runs them all on one machine. A Django app only so that
Django finds its management command."""
