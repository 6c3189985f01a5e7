"""``avsync serve``: AVSyncD behind an HTTP API and a web page, on Ray Serve.

``schemas`` (request, job and error types), ``jobs`` (the job book), ``uploads`` (probing and bounding uploads),
``model_slot`` (model sources and in-place swaps) and ``api`` (the FastAPI routes) are plain Python; only
``deployments`` and ``app`` import Ray. Replicas import only the modules their deployment needs, so keep this
file free of imports.
"""
