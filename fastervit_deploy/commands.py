"""Commands of the backends, registered on the shared app (kept out of cli.py so it stays thin)."""
