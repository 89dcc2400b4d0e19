"""``zoo serve``: an HTTP API and a web page over an index."""
