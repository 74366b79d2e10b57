"""The rankopt worker: models, data, training, the rank search and the pool that runs jobs.

``zoo``, ``data``, ``training``, ``search`` (the rank search), ``pool`` (the ``rankopt worker``
loop), ``cli`` (the ``rankopt`` entry point: ``train``, ``compress``; ``cli_pool`` adds
``worker``, ``service.cli`` the service's commands) and ``demo`` (``make demo``). It uses
``tensorops`` and ``service`` (settings, store, artifacts), never ``service.api`` or
``service.web``.
"""
