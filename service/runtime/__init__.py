"""Serving without HTTP: the scheduler and admission, the running server's state, the request log."""
