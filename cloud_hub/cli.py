"""``edgeloop-hub``: the hub's command line.

    edgeloop-hub serve [--broker embedded|URL] [--read-token-file F --admin-token-file F | --insecure-dev true] ...
    edgeloop-hub devices add NAME
    edgeloop-hub devices baseline NAME [--from T] [--to T] [--out FILE] [--model NAME]
    edgeloop-hub certs init [--host NAME ...] [--force] | certs server [--host NAME ...]
    edgeloop-hub models build [--out DIR] [--seed N] [--force] [--min-agreement X] [--signing-key FILE]
    edgeloop-hub models train --data FILE_OR_DIR... [--label COLUMN --urgent VALUE...] ...
    edgeloop-hub models verify DIR [--trust PUBKEY_FILE...]
    edgeloop-hub keys init [--keys-dir DIR] | keys show [--keys-dir DIR]
    edgeloop-hub batch score --model NAME[@VERSION] --input FILE_OR_DIR... --output FILE [--format F]
    edgeloop-hub pipeline run MODEL --from T --to T [--devices a,b] [--option K=V]... | list | show ID

Subcommands import what they need when they run, so ``--help`` stays fast and
never loads scikit-learn or onnxruntime. Errors print one line and exit 2;
``models verify`` exits 1 when the package does not verify.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloud_hub.recording_options import add_recording_options
from shared.errors import EdgeloopError
from shared.logformat import LOG_FORMAT_ENV, LOG_FORMATS, configure_logging, default_log_format
from shared.stdout import after_broken_pipe

__all__ = ["main"]

PROG = "edgeloop-hub"
EXIT_USAGE = 2
_SHOWN_METRICS = (
    "auc_macro",
    "f1_macro",
    "urgent_recall",
    "urgent_precision",
    "int8_fp32_agreement",
)

Handler = Callable[[argparse.Namespace], int]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.01:
        # Up to 1.01 so a gate can be shown to fail on purpose.
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1.01")
    return value


def _models_build(args: argparse.Namespace) -> int:
    # Imported here, not at the top: --help must not load scikit-learn and onnxruntime.
    from cloud_hub.keys import sign_packages, signing_key_for  # noqa: PLC0415
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415
    from shared.manifest import load_package  # noqa: PLC0415

    settings = resolve_settings(args, serving=False)
    signing_key_for(settings.signing_key, settings.data_dir)  # a bad key fails before the build
    result = build_default_models(
        args.out,
        seed=args.seed,
        devices=args.devices,
        readings_per_device=args.readings_per_device,
        min_agreement=args.min_agreement,
        force=args.force,
    )
    for path in (result.edge, result.heavy):
        m = load_package(path).manifest
        figures = " ".join(f"{k}={m.metrics[k]:.4f}" for k in _SHOWN_METRICS if k in m.metrics)
        print(
            f"{m.name} {m.version} {path} {m.model.quantization} {m.model.size} bytes "
            f"urgent_threshold={m.urgent.score_threshold:.2f} {figures}"
        )
    for line in sign_packages(settings.signing_key, settings.data_dir, [result.edge, result.heavy]):
        print(line)
    print(json.dumps(result.to_dict(), sort_keys=True))
    return 0


def _models_verify(args: argparse.Namespace) -> int:
    from cloud_hub.keys import KeyFiles, KeysError, default_keys_dir, read_public_keys, trusted_keys  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415
    from shared.package_verify import verify_package  # noqa: PLC0415

    if args.trust:
        trusted = read_public_keys(args.trust)
    else:
        settings = resolve_settings(args, serving=False)
        trusted = trusted_keys(settings.data_dir)
        if not trusted:
            files = KeyFiles(default_keys_dir(settings.data_dir))
            raise KeysError(
                f"no trusted public key: give --trust PUBKEY_FILE (a signing.pub), or make the "
                f"hub's key with 'edgeloop-hub keys init' (then {files.public} is trusted)"
            )
    result = verify_package(args.dir, trusted)
    print(f"package {args.dir}; trusted key id(s): {', '.join(k.key_id for k in trusted)}")
    for check in result.checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'} {check.what}: {check.detail}")
    failure = result.failure
    if failure is None:
        m = result.manifest
        assert m is not None
        print(f"verified: {m.name} {m.version}, signed by key id {result.key_id}")
        return 0
    print(
        f"{PROG}: {args.dir} does not verify: {failure.reason}: {failure.detail}",
        file=sys.stderr,
    )
    return 1


def _keys(args: argparse.Namespace) -> int:
    from cloud_hub.keys import KeyFiles, default_keys_dir, init_keys, public_key  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415

    settings = resolve_settings(args, serving=False)
    files = KeyFiles(args.keys_dir or default_keys_dir(settings.data_dir))
    if args.keys_command == "init":
        key = init_keys(files)
        print(f"signing key   {files.private}  (0600; keep it on the hub, never share it)")
    else:
        key = public_key(files)
    if files.public.is_file():
        print(f"public key    {files.public}  (devices and 'models verify --trust' use it)")
    else:
        print(f"public key    from {files.private} ({files.public} is missing: save the PEM below)")
    print(f"key id        {key.key_id}")
    sys.stdout.write(key.pem())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from cloud_hub.memory import return_large_blocks  # noqa: PLC0415
    from cloud_hub.service import serve  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415

    settings = resolve_settings(args, serving=True)
    return_large_blocks()  # so a flood of large payloads leaves no lasting RSS
    logging.getLogger().setLevel(settings.log_level)
    return serve(settings)


def _devices_add(args: argparse.Namespace) -> int:
    from cloud_hub.provision import MosquittoFiles, add_device  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415

    settings = resolve_settings(args, serving=False)
    files = None
    if (args.mosquitto_password_file is None) != (args.mosquitto_acl_file is None):
        args.parser.error(
            "give both --mosquitto-password-file and --mosquitto-acl-file (the files that "
            "mosquitto.conf's password_file and acl_file name), or neither to print the lines"
        )
    if args.mosquitto_password_file is not None:
        files = MosquittoFiles(args.mosquitto_password_file, args.mosquitto_acl_file)
    print(add_device(settings, args.name, rotate=args.rotate, mosquitto_files=files).render())
    return 0


def _time(text: str) -> float:
    from shared.columns import parse_timestamp  # noqa: PLC0415

    try:
        return parse_timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give unix seconds or ISO 8601 (2026-11-26T20:00:00Z; "
            "without a zone it is UTC)"
        ) from None


def _devices_baseline(args: argparse.Namespace) -> int:
    import math  # noqa: PLC0415
    import time  # noqa: PLC0415

    from cloud_hub.commissioning import baseline_from_store  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415
    from cloud_hub.store import open_store  # noqa: PLC0415

    settings = resolve_settings(args, serving=False)
    since = -math.inf if args.since is None else args.since
    until = math.inf if args.until is None else args.until
    if not since < until:
        args.parser.error(f"--from ({args.since}) must be before --to ({args.until})")
    store = open_store(settings.store)
    try:
        baseline = baseline_from_store(
            store,
            args.name,
            since,
            until,
            min_readings=max(settings.baseline_readings, 1),
            model=args.model,
        )
        store.put_baseline(baseline, time.time())
    finally:
        store.close()
    text = json.dumps(baseline.to_dict(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(
            f"device {baseline.device!r}: baseline for model {baseline.model} from "
            f"{baseline.readings} readings written to {args.out} and recorded in the store; "
            f"copy it to the device and give it to the agent with --baseline FILE (here: "
            f"--baseline {args.out.resolve()})"
        )
    return 0


def _certs(args: argparse.Namespace) -> int:
    from cloud_hub.certs import TlsFiles, default_hosts, describe, init_ca, issue_server  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415

    settings = resolve_settings(args, serving=False)
    files = TlsFiles(settings.data_dir / "tls")
    hosts = args.host or default_hosts()
    if args.certs_command == "init":
        init_ca(files, hosts, force=args.force)
    else:
        issue_server(files, hosts)
    print(describe(files))
    return 0


def _store_records(store_url: str) -> tuple[list[Any], dict[str, Any]]:
    """The registry's models and the devices' commissioned baselines (by device);
    none when the store's SQLite file does not exist yet (batch score creates no
    store)."""
    from cloud_hub.store import open_store  # noqa: PLC0415

    if store_url.startswith("sqlite:///") and not Path(store_url[len("sqlite:///") :]).exists():
        return [], {}
    store = open_store(store_url)
    try:
        return list(store.models()), {b.device: b for b in store.baselines()}
    finally:
        store.close()


def _batch_baselines(
    args: argparse.Namespace,
    stored: dict[str, Any],
    device_column: str | None,
    sensors: Sequence[str],
) -> Any:
    """The lookup ``batch score`` maps each series with (None: no baselines)."""
    from shared.baseline_file import read_baseline  # noqa: PLC0415

    if args.baseline is not None:
        one = read_baseline(args.baseline)
        # Its sensors must be the model's; its device and model names may be others'
        # (the user chose it for these rows).
        one.check_for(one.device, one.model, sensors, f"baseline file {args.baseline}")
        return lambda _series: one
    if not args.device_baselines:
        return None
    if device_column is None:
        args.parser.error(
            "--device-baselines maps each device's rows with its own baseline: name the "
            "input's device column with --device-column (or give one baseline for every row "
            "with --baseline FILE)"
        )
    return stored.get


def _batch_score(args: argparse.Namespace) -> int:
    from cloud_hub.batch.files import score_files  # noqa: PLC0415
    from cloud_hub.batch.output import format_for  # noqa: PLC0415
    from cloud_hub.batch.registry import resolve_model  # noqa: PLC0415
    from cloud_hub.recording_options import csv_options  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415

    settings = resolve_settings(args, serving=False)
    options = csv_options(args)
    fmt = format_for(args.output, args.format)
    records, stored = _store_records(settings.store)
    package = resolve_model(args.model, records, settings.models_dir)
    baselines = _batch_baselines(
        args, stored, options.device_column, package.manifest.input.sensor_names
    )
    summary = score_files(
        package,
        args.input,
        args.output,
        fmt,
        options,
        chunk_rows=args.chunk_rows,
        row_by_row={"auto": None, "yes": True, "no": False}[args.row_by_row],
        baselines=baselines,
    )
    checks = ", ".join(f"{k}={v}" for k, v in sorted(summary.input_checks.items())) or "none"
    print(
        f"{summary.rows} rows from {summary.files} file(s), {summary.series} series, in "
        f"{summary.elapsed_s:.2f} s ({summary.rows_per_s:,.0f} rows/s); urgent rows: "
        f"{summary.urgent_rows}; bad cells: {summary.bad_cells}; input checks: {checks}; "
        f"model {summary.model} {summary.version}"
        f"{' (scored row by row, as a device does)' if summary.row_by_row else ''}; "
        f"{_baselines_used(args, summary.baselines, summary.series)}"
        f"written to {summary.output} ({summary.format})"
    )
    print(json.dumps(summary.to_dict(), sort_keys=True))
    empty = sorted(
        key.partition(":")[2]
        for key, n in summary.input_checks.items()
        if key.startswith("missing:") and summary.rows and n >= summary.rows
    )
    if empty:
        print(
            f"{PROG}: warning: sensor(s) {', '.join(empty)} had no usable value in any of the "
            f"{summary.rows} rows, so every score used their fallback values: the result says "
            "nothing about them. Are the cells text (a decimal comma such as 0,05? write '.' "
            "as the decimal point), or is the wrong column mapped (--csv-map)?",
            file=sys.stderr,
        )
    if summary.ts_not_increasing:
        print(
            f"{PROG}: warning: {summary.ts_not_increasing} reading(s) have a timestamp not after "
            f"the previous one of their series (the first at {summary.ts_first_out_of_order}), "
            "so windows mixed readings out of time order and the scores there are not what a "
            "device would give. Sort the file by time (per device), and drop repeated "
            "readings; with several devices in one file, name their column (--device-column)",
            file=sys.stderr,
        )
    return 1 if empty or summary.ts_not_increasing else 0


def _baselines_used(args: argparse.Namespace, mapped: int, series: int) -> str:
    if args.baseline is not None:
        return f"readings mapped with the baseline in {args.baseline}; "
    if args.device_baselines:
        return (
            f"{mapped} of {series} device(s) mapped with their commissioned baseline, the "
            "others scored against the model's reference (they have none in the store); "
        )
    return ""


def _add_batch(commands: Any) -> None:
    from cloud_hub.settings import OPTIONS  # noqa: PLC0415

    batch = commands.add_parser(
        "batch",
        help="batch inference (score)",
        description="Batch inference with a registered model.",
    )
    batch.set_defaults(parser=batch)
    batch_cmds = batch.add_subparsers(title="batch commands", metavar="COMMAND")
    score = batch_cmds.add_parser(
        "score",
        help="score recorded CSV (or Parquet) files with a registered model into one result file",
        description="Read each input (CSV, or Parquet with pyarrow) in chunks, compute the "
        "model's features per device (--device-column) or per file, score them, apply the "
        "model's urgent rule, and write every input row, in order, with its timestamp (and "
        "device), the predicted class, the urgent score and urgent (0/1) to --output. A cell "
        "that is not a number counts as missing (and is counted); every row is kept. Prints a "
        "summary, then one JSON line. The model comes from the hub's registry (--store, "
        "--models-dir), whether or not the hub runs. With --baseline or --device-baselines "
        "the readings are mapped with a per-device baseline first, as the agent does.",
    )
    score.add_argument(
        "--model",
        required=True,
        metavar="NAME[@VERSION]",
        help="a registered model, e.g. machine-heavy or machine-edge@1.1.0 (no version: the newest)",
    )
    score.add_argument(
        "--input",
        required=True,
        nargs="+",
        action="extend",
        type=Path,
        metavar="FILE_OR_DIR",
        help="CSV or Parquet files, or directories searched for *.csv and *.tsv",
    )
    score.add_argument(
        "--output", required=True, type=Path, metavar="FILE", help="the result file (replaced)"
    )
    score.add_argument(
        "--format",
        choices=("csv", "jsonl", "parquet"),
        help="output format (default: from --output's suffix, .jsonl or .parquet; else csv)",
    )
    add_recording_options(score)
    score.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=16_384,
        metavar="N",
        help="rows read, scored and written at a time (default: 16384)",
    )
    score.add_argument(
        "--row-by-row",
        choices=("auto", "yes", "no"),
        default="auto",
        help="score each row alone, as a device does (auto: for int8 models, whose dynamic "
        "quantization makes a row's scores depend on the rows scored with it)",
    )
    mapping = score.add_mutually_exclusive_group()
    mapping.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE",
        help="map every row with this per-device baseline before the model, as an agent "
        "started with --baseline FILE does (the file 'edgeloop-hub devices baseline' or "
        "GET /v1/devices/DEVICE/baseline gives; its sensors must be the model's)",
    )
    mapping.add_argument(
        "--device-baselines",
        action="store_true",
        help="map each device's rows (--device-column) with the baseline the hub's store "
        "(--store, --data-dir) holds for it; a device without one is scored against the "
        "model's reference, as its agent would be",
    )
    OPTIONS.add_to(score, only=("data_dir", "models_dir", "store"))
    score.set_defaults(handler=_batch_score, parser=score)


def _add_log_format(parser: argparse.ArgumentParser, default: str) -> None:
    """``--log-format`` on the top-level parser and on ``serve`` (where operators look);
    ``default`` SUPPRESS on the subcommand, so it does not undo the top-level flag."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help=f"log lines as text, or one JSON object per line (default: ${LOG_FORMAT_ENV}, "
        "else text)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The edgeloop cloud hub.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v for progress, -vv for debugging",
    )
    _add_log_format(parser, default="")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    models = commands.add_parser(
        "models",
        help="model packages (build, train, verify) and the registry (register, list, show, "
        "promote, archive)",
        description="Model packages: the default edge and heavy models (build), a pair "
        "trained on your recordings (train), and checking a package's files and signature "
        "(verify).",
    )
    models.set_defaults(parser=models)
    models_cmds = models.add_subparsers(title="model commands", metavar="COMMAND")
    build = models_cmds.add_parser(
        "build",
        help="build the default edge (int8) and heavy (fp32) models from simulator data",
        description="Simulate a labelled data set, train the default edge and heavy models, "
        "quantize the edge model to int8, gate it against its fp32 twin, and write both "
        "packages to OUT/{machine-edge,machine-heavy}/1.1.0. Existing valid packages are "
        "reused unless --force.",
    )
    build.add_argument(
        "--out",
        type=Path,
        default=Path("var/models"),
        metavar="DIR",
        help="directory to write the packages into (default: ./var/models)",
    )
    build.add_argument(
        "--seed",
        type=int,
        default=7,
        metavar="N",
        help="seed for the simulated data and the training (default: 7)",
    )
    build.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if valid packages of this version already exist",
    )
    build.add_argument(
        "--min-agreement",
        type=_fraction,
        default=0.99,
        metavar="X",
        help="least share of holdout rows on which the int8 edge model must pick "
        "the same class as its fp32 twin (default: 0.99)",
    )
    build.add_argument(
        "--devices",
        type=_positive_int,
        default=16,
        metavar="N",
        help="simulated devices in the training data (default: 16)",
    )
    build.add_argument(
        "--readings-per-device",
        type=_positive_int,
        default=4000,
        metavar="N",
        help="simulated readings per device (default: 4000)",
    )
    # settings import nothing heavy
    from cloud_hub.settings import OPTIONS, PROVISION_OPTIONS  # noqa: PLC0415

    OPTIONS.add_to(build, only=("data_dir", "signing_key"))
    build.set_defaults(handler=_models_build)
    from cloud_hub.train_command import add_train_parser  # noqa: PLC0415

    add_train_parser(models_cmds)
    from cloud_hub.registry_command import add_registry_parsers  # noqa: PLC0415

    add_registry_parsers(models_cmds)
    verify = models_cmds.add_parser(
        "verify",
        help="verify a model package: every file's size and sha256, and its signature",
        description="Check package directory DIR: manifest.json validates and lists every "
        "file; each listed file is present with its size and sha256; no unlisted file; "
        "manifest.sig verifies over manifest.json's bytes with a trusted public key. Prints "
        "each check; exits 1 naming the reason (missing_file, size_mismatch, "
        "sha256_mismatch, unlisted_file, unsigned, malformed_signature, unknown_key, "
        "bad_signature, malformed_manifest) when it does not verify.",
    )
    verify.add_argument("dir", type=Path, metavar="DIR", help="the package directory")
    verify.add_argument(
        "--trust",
        type=Path,
        action="append",
        metavar="PUBKEY_FILE",
        help="a public key to trust (PEM, as signing.pub); repeat for several (rotation). "
        "Default: the hub's own, DATA_DIR/keys/signing.pub",
    )
    OPTIONS.add_to(verify, only=("data_dir",))
    verify.set_defaults(handler=_models_verify, parser=verify)

    from cloud_hub.rollout_command import add_rollout_parsers  # noqa: PLC0415

    add_rollout_parsers(commands)
    from cloud_hub.pipeline_command import add_pipeline_parsers  # noqa: PLC0415

    add_pipeline_parsers(commands)
    keys = commands.add_parser("keys", help="the Ed25519 key that signs model packages")
    keys.set_defaults(parser=keys)
    keys_cmds = keys.add_subparsers(title="key commands", metavar="COMMAND")
    for command, summary, description in (
        (
            "init",
            "make the package signing key; print its public key and key id",
            "Make an Ed25519 key pair: KEYS_DIR/signing.key (private, mode 0600, never "
            "printed) and KEYS_DIR/signing.pub (public, PEM). Prints the public key and its key "
            "id (the first 16 hex digits of the sha256 of the raw 32-byte public key). Builds "
            "(models build, models train, the hub's start) then sign packages with it. An "
            "existing key is never overwritten: to rotate, make the new key in another "
            "--keys-dir.",
        ),
        (
            "show",
            "print the public key and key id",
            "Print the signing key's public key (PEM) and its key id.",
        ),
    ):
        sub = keys_cmds.add_parser(command, help=summary, description=description)
        sub.add_argument(
            "--keys-dir",
            type=Path,
            metavar="DIR",
            help="where the key files are (default: DATA_DIR/keys)",
        )
        OPTIONS.add_to(sub, only=("data_dir",))
        sub.set_defaults(handler=_keys, keys_command=command)

    serve = commands.add_parser(
        "serve",
        help="run the hub: broker (embedded by default), ingest, store and HTTP API",
        description="Run the hub until SIGTERM or Ctrl-C. Every option can also be set as an "
        "environment variable EDGELOOP_HUB_<OPTION> or a key of the --config TOML file. The API "
        "needs a read token and an admin token unless --insecure-dev true: in files "
        "(--read-token-file, --admin-token-file, mode 0600) or the environment "
        "(EDGELOOP_HUB_READ_TOKEN, EDGELOOP_HUB_ADMIN_TOKEN); secrets given as flags are "
        "refused, since every local user can read flags (ps).",
    )
    OPTIONS.add_to(serve)
    _add_log_format(serve, default=argparse.SUPPRESS)
    serve.set_defaults(handler=_serve)

    devices = commands.add_parser("devices", help="device provisioning (add) and baselines")
    devices.set_defaults(parser=devices)
    devices_cmds = devices.add_subparsers(title="device commands", metavar="COMMAND")
    add = devices_cmds.add_parser(
        "add",
        help="create a device's broker credentials and print the agent settings to copy onto it",
        description="Create a random secret for device NAME. With the embedded broker it is added "
        "to the broker's password file at once; with an external Mosquitto (--broker URL) its "
        "password line and ACL block (the device reads and writes only its own topics) are "
        "written to --mosquitto-password-file and --mosquitto-acl-file, or printed without them. "
        "A device that already exists is refused unless --rotate; the hub's own names (its "
        "account 'hub', its client id 'edgeloop-hub') are always refused. The options below "
        "say where the broker, its accounts and "
        "the store are; like serve's, each is also EDGELOOP_HUB_<OPTION> or a key of the "
        "--config file (which may hold serve's other settings too).",
    )
    add.add_argument(
        "name", metavar="NAME", help="device id: 1-64 of letters, digits, '_', '-', '.'"
    )
    add.add_argument(
        "--rotate",
        action="store_true",
        help="give a device that already exists a new secret, replacing the old one; prints "
        "the new agent settings and when the old password stops working",
    )
    add.add_argument(
        "--mosquitto-password-file",
        type=Path,
        metavar="PATH",
        help="external Mosquitto only: the file mosquitto.conf's 'password_file' names; the "
        "device's line is written there (replacing an older one). Then reload Mosquitto: "
        "kill -HUP $(pidof mosquitto)",
    )
    add.add_argument(
        "--mosquitto-acl-file",
        type=Path,
        metavar="PATH",
        help="external Mosquitto only: the file mosquitto.conf's 'acl_file' names; the device's "
        "ACL block is written there (and the hub's, if missing)",
    )
    OPTIONS.add_to(add, only=PROVISION_OPTIONS)
    add.set_defaults(handler=_devices_add, parser=add)
    base = devices_cmds.add_parser(
        "baseline",
        help="compute a device's baseline from its stored readings, record it and print the "
        "file its agent reads (--baseline)",
        description="Compute device NAME's baseline (per sensor, the location and scale of its "
        "normal: the agent maps its readings onto the model's reference with it) from its stored "
        "readings with FROM <= timestamp < TO, record it in the store (replacing the device's "
        "earlier one; GET /v1/devices/NAME/baseline serves it) and print it, or write it to "
        "--out. Choose a range in which the machine ran normally, in all its operating "
        "regimes, and without a baseline in its agent; it must hold at least "
        "--baseline-readings readings. Works whether or not the hub runs; "
        "the options below say where the store is, like serve's.",
    )
    base.add_argument("name", metavar="NAME", help="device id")
    base.add_argument(
        "--from",
        dest="since",
        type=_time,
        metavar="T",
        help="first reading's time, unix seconds or ISO 8601 (default: the device's first)",
    )
    base.add_argument(
        "--to",
        dest="until",
        type=_time,
        metavar="T",
        help="end of the range, exclusive (default: the device's last reading)",
    )
    base.add_argument("--out", type=Path, metavar="FILE", help="write the baseline here")
    base.add_argument(
        "--model",
        metavar="NAME",
        help="the edge model the device runs, if its readings fit several registered ones",
    )
    OPTIONS.add_to(base, only=("data_dir", "store", "baseline_readings"))
    base.set_defaults(handler=_devices_baseline, parser=base)

    certs = commands.add_parser("certs", help="a private CA and the hub's TLS certificate")
    certs.set_defaults(parser=certs)
    certs_cmds = certs.add_subparsers(title="certificate commands", metavar="COMMAND")
    hosts_help = (
        "a DNS name or IP address devices and clients use to reach the hub; repeat for each "
        "(default: this host's name, localhost, 127.0.0.1, ::1)"
    )
    init = certs_cmds.add_parser(
        "init",
        help="make a private CA and a server certificate in DATA_DIR/tls",
        description="Make a small private certificate authority (ECDSA P-256, 10 years) and a "
        "server certificate signed by it (825 days) for the --host names, in DATA_DIR/tls: "
        "ca.pem, ca.key, server.pem, server.key (keys 0600). For a site that has no CA of "
        "its own. An existing CA is kept unless --force.",
    )
    init.add_argument("--host", action="append", metavar="NAME", help=hosts_help)
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA; every device then needs the new ca.pem",
    )
    OPTIONS.add_to(init, only=("data_dir",))
    init.set_defaults(handler=_certs, certs_command="init")
    server = certs_cmds.add_parser(
        "server",
        help="issue a new server certificate from the existing CA (new names, renewal)",
        description="Issue a new server certificate and key in DATA_DIR/tls from the CA that "
        "`certs init` made, for the --host names. Devices keep their ca.pem.",
    )
    server.add_argument("--host", action="append", metavar="NAME", help=hosts_help)
    OPTIONS.add_to(server, only=("data_dir",))
    server.set_defaults(handler=_certs, certs_command="server")
    _add_batch(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edgeloop-hub``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        (getattr(args, "parser", None) or parser).print_help(sys.stderr)
        return EXIT_USAGE
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    configure_logging(level, args.log_format or default_log_format())
    if args.verbose < 2:
        # onnxruntime's quantizer and skl2onnx log chatty INFO lines on their own loggers.
        logging.getLogger("skl2onnx").setLevel(logging.WARNING)
    try:
        return handler(args)
    except BrokenPipeError:  # `| head` read what it wanted
        return after_broken_pipe()
    except (EdgeloopError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
