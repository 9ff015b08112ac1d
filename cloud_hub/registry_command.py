"""``edgeloop-hub models register|list|show|promote|archive``: the model registry from the shell.

    edgeloop-hub models register DIR [--trust PUBKEY]... [--stage candidate|canary|production]
    edgeloop-hub models list [--name NAME] [--json]
    edgeloop-hub models show NAME VERSION [--json]
    edgeloop-hub models promote NAME VERSION --to canary|production|candidate [--reason TEXT]
    edgeloop-hub models archive NAME VERSION [--reason TEXT]

Each works on the store and the registry directory (``DATA_DIR/registry``)
that ``serve`` uses, running or not (SQLite in WAL mode takes a second
writer). The rules are :mod:`cloud_hub.registry.stages`'s; registering is
:func:`cloud_hub.registry.register.register_package`. Importing this module
loads nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shared.isotime import iso_utc

if TYPE_CHECKING:
    from cloud_hub.store.base import ModelRecord, StageLogEntry

__all__ = ["REGISTRY_OPTIONS", "add_registry_parsers", "record_dict", "settings_and_store"]

REGISTRY_OPTIONS: Final = ("data_dir", "store", "signing_key")
"""serve's options that say where the registry and the signing key are."""


@contextmanager
def settings_and_store(
    args: argparse.Namespace, *, create: bool = True
) -> Iterator[tuple[Any, Any]]:
    """The command's settings and the store they name, closed afterwards (the
    registry and pipeline commands); ``create=False``: a store that does not exist
    yet is an error (a mistyped --data-dir), not a new empty one."""
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415
    from cloud_hub.store import open_store  # noqa: PLC0415

    settings = resolve_settings(args, serving=False)
    store = open_store(settings.store, create=create)
    try:
        yield settings, store
    finally:
        store.close()


def record_dict(record: ModelRecord, log: list[StageLogEntry] | None = None) -> dict[str, Any]:
    """What ``models show --json`` prints (and the API's registry view holds)."""
    from shared.signing import signature_key_id  # noqa: PLC0415

    m = record.manifest
    key_id = signature_key_id(record.signature)
    out: dict[str, Any] = {
        "name": record.name,
        "version": record.version,
        "variant": record.variant,
        "stage": record.stage.value,
        "stage_changed_at": record.stage_changed_at,
        "registered_at": record.registered_at,
        "registered_by": record.registered_by,
        "signed_by": key_id,
        "created": m.created,
        "lineage": {
            "parent": m.lineage.parent,
            "data_window": m.lineage.data_window,
            "data_hash": m.lineage.data_hash,
            "pipeline_run": m.lineage.pipeline_run,
        },
        "min_agent_version": m.min_agent_version,
        "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in m.files],
        "metrics": dict(m.metrics),
    }
    if log is not None:
        out["history"] = [
            {
                "at": e.at,
                "from": None if e.from_stage is None else e.from_stage.value,
                "to": e.to_stage.value,
                "by": e.by,
                "reason": e.reason,
            }
            for e in log
        ]
    return out


def _register(args: argparse.Namespace) -> int:
    from cloud_hub.keys import signing_key_for, trusted_keys  # noqa: PLC0415
    from cloud_hub.registry.register import (  # noqa: PLC0415
        default_registrant,
        register_package,
        registry_root,
    )
    from cloud_hub.registry.stages import parse_stage  # noqa: PLC0415

    with settings_and_store(args) as (settings, store):
        done = register_package(
            store,
            registry_root(settings.data_dir),
            args.dir,
            trusted=trusted_keys(settings.data_dir, args.trust or ()),
            key=signing_key_for(settings.signing_key, settings.data_dir),
            by=args.by or default_registrant(),
            at=time.time(),
            stage=parse_stage(args.stage),
        )
    print(done.describe())
    if done.record.signature is None:
        print(
            "  unsigned: devices refuse unsigned packages. Make the hub's key with "
            "'edgeloop-hub keys init' and register it again to sign it.",
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    with settings_and_store(args) as (_settings, store):
        records = [r for r in store.models() if args.name in (None, r.name)]
    if args.json:
        print(json.dumps([record_dict(r) for r in records], indent=2))
        return 0
    if not records:
        where = f" named {args.name}" if args.name else ""
        print(f"no model versions{where} registered ('edgeloop-hub models register DIR')")
        return 0
    width = max(len(r.name) for r in records)
    print(
        f"{'NAME':<{width}}  {'VERSION':<10} {'VARIANT':<7} {'STAGE':<10} {'SIGNED':<6} REGISTERED BY"
    )
    for r in records:
        signed = "yes" if r.signature is not None else "no"
        print(
            f"{r.name:<{width}}  {r.version:<10} {r.variant:<7} {r.stage.value:<10} "
            f"{signed:<6} {r.registered_by or '-'}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from cloud_hub.registry.register import find_version  # noqa: PLC0415

    with settings_and_store(args) as (_settings, store):
        record = find_version(store, args.name, args.version)
        out = record_dict(record, store.stage_log(args.name, args.version))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key in ("name", "version", "variant", "stage", "registered_by", "signed_by", "created"):
        print(f"{key + ':':<15} {out[key] if out[key] is not None else '-'}")
    print(
        f"{'lineage:':<15} parent {out['lineage']['parent'] or '-'}, pipeline run "
        f"{out['lineage']['pipeline_run'] or '-'}"
    )
    for f in out["files"]:
        print(f"{'file:':<15} {f['path']} ({f['size']} bytes, sha256 {f['sha256'][:16]}...)")
    for e in out["history"]:
        when = iso_utc(e["at"])
        print(
            f"{'history:':<15} {when} {e['from'] or '(new)'} -> {e['to']} by {e['by']}: {e['reason']}"
        )
    return 0


def _stage(args: argparse.Namespace, to: str) -> int:
    from cloud_hub.registry.register import change_stage, default_registrant  # noqa: PLC0415

    with settings_and_store(args) as (_settings, store):
        changes = change_stage(
            store,
            args.name,
            args.version,
            to,
            reason=args.reason,
            by=args.by or default_registrant(),
        )
    for c in changes:
        print(f"{args.name} {c.version}: {c.from_stage.value} -> {c.to_stage.value} ({c.reason})")
    return 0


def add_registry_parsers(models_cmds: Any) -> None:
    """Add register, list, show, promote and archive to the ``models`` subcommands."""
    from cloud_hub.settings import OPTIONS  # noqa: PLC0415  (imports nothing heavy)

    def by_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--by",
            metavar="WHO",
            help="who makes the change, for the registry's record (default: cli:LOGIN_NAME)",
        )

    reg = models_cmds.add_parser(
        "register",
        help="verify a model package, sign it if unsigned (with the hub's key), and register it",
        description="Verify package DIR (manifest, every file's size and sha256, nothing "
        "unlisted; a signature must verify with a key the hub trusts), sign it with the hub's "
        "key when unsigned and a key exists (the registry's copy: DIR is never written to), "
        "copy its files into the content-addressed registry (DATA_DIR/registry) and record it "
        "as a candidate. The same content again changes nothing; other content under a "
        "registered version is refused: versions are immutable.",
    )
    reg.add_argument("dir", type=Path, metavar="DIR", help="the package directory")
    reg.add_argument(
        "--trust",
        type=Path,
        action="append",
        metavar="PUBKEY_FILE",
        help="also trust this public key (PEM) for a package signed elsewhere; repeatable. "
        "The hub's own DATA_DIR/keys/signing.pub is always trusted",
    )
    reg.add_argument(
        "--stage",
        default="candidate",
        choices=("candidate", "canary", "production"),
        help="the stage it enters with (default: candidate)",
    )
    by_option(reg)
    OPTIONS.add_to(reg, only=REGISTRY_OPTIONS)
    reg.set_defaults(handler=_register, parser=reg)

    lst = models_cmds.add_parser(
        "list",
        help="registered model versions with their stage",
        description="List every "
        "registered model version: name, version, variant, stage, signed or not, who registered it.",
    )
    lst.add_argument("--name", metavar="NAME", help="only this model's versions")
    lst.add_argument("--json", action="store_true", help="print JSON")
    OPTIONS.add_to(lst, only=("data_dir", "store"))
    lst.set_defaults(handler=_list, parser=lst)

    show = models_cmds.add_parser(
        "show",
        help="one model version: stage, lineage, files, signature and its stage history",
        description="Show model NAME VERSION as registered: stage, who registered it, the key "
        "that signed it, lineage, files and every stage change.",
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("version", metavar="VERSION")
    show.add_argument("--json", action="store_true", help="print JSON")
    OPTIONS.add_to(show, only=("data_dir", "store"))
    show.set_defaults(handler=_show, parser=show)

    promote = models_cmds.add_parser(
        "promote",
        help="move a model version to another stage (candidate, canary, production)",
        description="Move NAME VERSION to stage --to. Allowed: candidate -> canary, production "
        "or archived; canary -> production, candidate or archived; production -> archived; "
        "archived -> candidate. A model has one production version: promoting another "
        "archives it. A stage is the registry's label: it pushes nothing to devices.",
    )
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", metavar="VERSION")
    promote.add_argument(
        "--to", required=True, choices=("candidate", "canary", "production"), help="the new stage"
    )
    promote.add_argument("--reason", default="promoted by hand", help="why, for the record")
    by_option(promote)
    OPTIONS.add_to(promote, only=("data_dir", "store"))
    promote.set_defaults(handler=lambda a: _stage(a, a.to), parser=promote)

    archive = models_cmds.add_parser(
        "archive",
        help="archive a model version (it stays registered and can come back as a candidate)",
        description="Move NAME VERSION to the archived stage. Its files stay in the registry.",
    )
    archive.add_argument("name", metavar="NAME")
    archive.add_argument("version", metavar="VERSION")
    archive.add_argument("--reason", default="archived by hand", help="why, for the record")
    by_option(archive)
    OPTIONS.add_to(archive, only=("data_dir", "store"))
    archive.set_defaults(handler=lambda a: _stage(a, "archived"), parser=archive)
