"""HTTP only (Litestar): the app factory, routes per API family, schemas, the error table."""
