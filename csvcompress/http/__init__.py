"""The HTTP layer: what the service answers, and in what order it decides.

- routes.py: every route, in one table grouped by resource.
- middleware.py: the middleware, in one ordered list (errors, API key, stopping, log context).
- Handlers by resource: requests.py (/status/{id} and /requests/...), uploads.py
  (POST /upload), files.py (/files/{key}), pages.py (/, the request page, /static),
  ops.py (/healthz, /metrics), openapi.py (the document and /openapi.json).
- auth.py: which routes need the API key.
- keys.py: the handle on the running service, a leaf every module here may import.

No module here imports app.py (which wires this package), and none imports another in
a cycle (tests/http/test_routes.py checks both).
"""
