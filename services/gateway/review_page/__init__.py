"""The review page: /review/{token}, server-rendered HTML for a reviewer with a review link (no API key)."""
