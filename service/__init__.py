"""The rankopt service: the REST API and what it stands on, with no torch or Optuna.

``settings`` (``RANKOPT_*``), ``spec`` (the job spec), ``artifacts`` (the artifact store),
``store`` (the job database), ``api`` (the FastAPI app, which includes ``web``, the page at
``/``), ``client`` (the Python client), ``cli`` (``rankopt serve``, ``keys``, ``db`` and the
client commands) and ``procs`` (starting ``rankopt`` processes). Nothing here imports
``worker``; the rules are import-linter contracts in ``pyproject.toml``.
"""
