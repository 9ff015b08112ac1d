"""Which model package ``NAME[@VERSION]`` names.

The hub's registry is its store's ``models`` table (the hub registers the
packages it builds or trains there); packages under the models directory
(``DIR/NAME/VERSION/manifest.json``, as ``models build`` lays them out) count
too, so a registry works before the hub has ever run. Without ``@VERSION`` the
newest version is taken.
"""

from __future__ import annotations

from pathlib import Path

from cloud_hub.batch import BatchError
from cloud_hub.store.base import ModelRecord
from shared.errors import ManifestError
from shared.manifest import MANIFEST_FILE, ModelPackage, load_package, parse_version

__all__ = ["parse_model_spec", "resolve_model"]


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """``"machine-heavy@1.1.0"`` -> ``("machine-heavy", "1.1.0")``; no ``@``: version None.

    >>> parse_model_spec("machine-heavy"), parse_model_spec("m@1.2.3")
    (('machine-heavy', None), ('m', '1.2.3'))
    """
    name, sep, version = spec.strip().partition("@")
    if not name or (sep and not version):
        raise BatchError(f"--model {spec!r}: give NAME or NAME@VERSION, e.g. machine-heavy@1.1.0")
    if sep:
        try:
            parse_version(version)
        except ValueError as exc:
            raise BatchError(f"--model {spec!r}: {exc}") from None
    return name, (version if sep else None)


def _on_disk(models_dir: Path) -> dict[tuple[str, str], Path]:
    found: dict[tuple[str, str], Path] = {}
    if not models_dir.is_dir():
        return found
    for manifest in models_dir.glob(f"*/*/{MANIFEST_FILE}"):
        name, version = manifest.parent.parent.name, manifest.parent.name
        try:
            parse_version(version)
        except ValueError:
            continue
        found[(name, version)] = manifest.parent
    return found


def resolve_model(spec: str, records: list[ModelRecord], models_dir: Path) -> ModelPackage:
    """The package ``spec`` names, loaded and checked (size and sha256).

    ``records`` are the registry's models; a package under ``models_dir`` that
    the registry lacks is found too. An unknown name lists the known ones.
    """
    name, version = parse_model_spec(spec)
    known: dict[tuple[str, str], Path] = _on_disk(models_dir)
    for r in records:
        path = Path(r.path)
        if not path.is_absolute():
            path = models_dir / path
        known[(r.name, r.version)] = path if path.is_dir() else path.parent
    versions = sorted((v for n, v in known if n == name), key=parse_version)
    if not versions:
        names = sorted({n for n, _ in known})
        raise BatchError(
            f"--model {spec!r}: no model {name!r} is registered; known models: "
            f"{', '.join(names) or 'none'} (in the store and under {str(models_dir.resolve())!r}; "
            "--data-dir and --models-dir name a hub's, as for serve; "
            "'edgeloop-hub models build' makes the default ones)"
        )
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise BatchError(
            f"--model {spec!r}: model {name!r} has no version {version}; its versions: "
            f"{', '.join(versions)}"
        )
    path = known[(name, version)]
    try:
        return load_package(path)
    except ManifestError as exc:
        raise BatchError(f"--model {spec!r}: the package cannot be used: {exc}") from None
