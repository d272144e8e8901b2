"""The `minivault` command line: the Typer app, its commands, the HTTP client and the load generator."""
