"""One module per resource; each exposes ``router``. :func:`cloud_hub.api.app.create_app`
includes them all."""
