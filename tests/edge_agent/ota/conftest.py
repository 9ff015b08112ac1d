"""The valid manifest of the manifest tests, for the compatibility checks."""

from tests.shared.test_manifest import manifest_dict

__all__ = ["manifest_dict"]
