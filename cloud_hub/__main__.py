"""``python -m cloud_hub``: the same as ``edgeloop-hub``."""

from cloud_hub.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
