"""diffship's image service: an HTTP app (OpenAI and AUTOMATIC1111 APIs, health, readiness, Prometheus metrics) over
one pipeline with request batching, run by uvicorn (``cli.py serve``) or as a Ray Serve deployment (``serve.ray_app``).
Imports the runtime only: no torch at serving time."""
