"""The operations console: server-rendered pages for vendor staff under `/console/` on the
HTTP port (README "Operations console").

Staff sign in with an API token; its scopes are their role (roles.py). The session is a
sealed cookie (session.py) that carries the token, so every request authenticates it again
as the API does and any worker or replica can serve it; every POST carries a CSRF token
derived from the session and must come from the console's own origin (csrf.py). Pages call
the app layer only, as the servicers do (routes.py).
"""
