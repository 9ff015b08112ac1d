"""The model registry: versions with stages, content-addressed artifacts, signing at registration.

:mod:`.stages` (pure) holds the stage rules, :mod:`.blobs` the content-addressed
files, :mod:`.register` what ``edgeloop-hub models register`` (and the API, the
hub's default build and ``models train``) do. Importing this package loads none
of them.
"""
