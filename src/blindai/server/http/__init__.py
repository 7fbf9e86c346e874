"""The HTTP edge: the only place that imports starlette or uvicorn, names a status or a header."""
