"""The REST API: views, input validation, the error envelope, OpenAPI, token
authentication, rate limits and URLs."""
