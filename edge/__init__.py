"""What stands between clients and the web process's pool of threads: uvicorn's protocol
with bounded request heads (http_protocol.py), request bodies read on the event loop
(request_body.py), signed links' files sent after their view returned (file_sender.py),
and the start-up checks of a web process (lifespan.py). downloads_project/asgi.py puts
them around the WSGI application."""
