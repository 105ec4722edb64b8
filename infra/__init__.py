"""Clients of what the service runs on (Redis, the process's role), built in one place and
handed to the code that uses them. A plain package, not a Django app: it imports no app
code, so settings and every app may import it."""
