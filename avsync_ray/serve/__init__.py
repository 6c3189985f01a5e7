"""``avsync serve``: AVSyncD behind an HTTP API and a web page, on Ray Serve.

``schemas`` (request, job and error types), ``jobs`` (the job book), ``uploads`` (the HTTP answer to refused
uploads), ``model_slot`` (model sources and in-place swaps) and ``api`` (the HTTP pieces: the animation form and
its bounds, the OpenAPI schema, auth, errors, the page) are plain Python; ``ingress`` (the FastAPI ``app`` and the
ingress deployment, as Ray's Stable Diffusion example writes them), ``deployments`` (the model deployments and the
job book's) and ``app`` (the application builder and ``avsync serve``) import Ray. Replicas import only the modules their deployment needs, so keep this
file free of imports.
"""
