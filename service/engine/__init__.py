"""One backend interface and what is shared above it: generation loop, sampling, UTF-8/stop-string text."""
