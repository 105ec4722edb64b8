"""The client's tests, a package of a name of its own: the service's tests are the
top-level package `tests`, whose name a second `tests` package would shadow."""
