"""What a browser sees outside the API: the download page, signed local file links, and
the sign-in pages' protection."""
