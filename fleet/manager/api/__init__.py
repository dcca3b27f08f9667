"""The manager's HTTP side: the bottle app (routes), its OpenAPI document, and the server (an h11 loop feeding worker threads)."""
