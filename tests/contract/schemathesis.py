#!/usr/bin/env python3
"""Runs Schemathesis 4 against a running Fleetyard server, once per role, with every check.

    schemathesis.py --base-url http://127.0.0.1:8080 --seed-file seed.json [--report-dir DIR]
                    [--roles agent,ci,donor,admin,logout] [--max-examples 15] [--seed 13]

The document tested is the one the server serves (`/api/openapi.json`). Each role's run has
every check (`--checks all`, which includes `ignored_auth`, `use_after_free`,
`ensure_resource_availability`, and `object_level_authorization` wherever a peer identity
exists) and all four phases: examples, coverage, fuzzing and stateful. It is bounded for a
2-core machine: 15 examples per operation and phase, stateful scenarios of up to 12 steps, one
worker, a fixed generation seed (the same run twice sends the same requests), a 10 s timeout
per request. All five role runs take about 1.5 to 2 minutes here (the coverage phase, which
does not depend on `--max-examples`, is most of it; 25 examples took 2 min 20 s and found one
failure more than 8).

`seed.json` is what `seed.py` printed: tokens and ids. Path ids are bound per role (most cases,
`--id-probability`, use the seeded id; the rest are generated), so reads by id hit real entities
(otherwise almost every `GET /x/{id}` would only ever see a 404) and writes that can change an
entity for good (revoke, disable, transition, withdraw, release, delete) act on spares that no
token of the run depends on.

Roles, each run with that caller's `Authorization: Bearer` (through a Web Fuzzing Commons auth
file, which also names the peers for `object_level_authorization`):
- `agent`: the agent credential of a ready lab machine; only `/api/v1/agent/*` and the public
  system endpoints (every other operation answers an agent 403 before looking at input);
- `ci`: a service token for any tenant, with a second one as its peer (a service account sees
  its own leases and jobs only);
- `donor`: donor A's user, with donor B's user as its peer (a donor sees its own only);
- `admin`: ops;
- `logout`: `POST /auth/logout` alone, with a session nobody else uses (see below).

Exclusions, each impossible to test in a shared-token run, and what is done instead:
- `POST /auth/logout` ends every session of the caller's user, so after the first success every
  later request of that role's run would fail 401. It is left out of the role runs and tested
  last, alone, in the `logout` run with its own user's session.
- Long polls are not excluded but pinned to `wait=0` (`POST /leases`, `GET /leases/{id}`,
  `GET /agent/work`), so no request holds a worker for up to 60 s.
- `POST /schedules/{name}/run` is pinned to `liveness-sweep`: `webhook-delivery` and
  `ssh-checks` would send traffic to whatever URLs and hosts the fuzzer registered, and no
  traffic may leave this machine. (The server is also started with every network refused for
  SSH and an unreachable HTTP proxy; see run-local.sh.)
- `/api/docs` and `/api/openapi.json` are not in the document, so there is nothing to exclude.

Schema-valid requests that are still refused: `positive_data_acceptance` accepts 409 and 422
besides success, 401, 403 and 404. The document states every limit, pattern and required field
the server checks on one field (lengths, ranges, tenant and asset-tag patterns, non-blank text
without control characters, integers written `2.0`), but some rules no JSON Schema here states:
references to rows that must exist and be the caller's (a donation's site, a lease's inventory:
`unsatisfiable`), rules across fields (a loan's due date after its start, a location only when
a machine is received, a token or a launch secret to enroll), opaque cursors the server issued,
the NUL character (refused in every string and key), and what a text must parse as (an IANA
time zone, an email address, an http(s) URL, label keys in map keys). Those answer 422 naming the
field (or 409 for a conflict), which this check is told to accept; every other check runs with
its defaults.

Login throttling: the fuzzer sends many failed logins from 127.0.0.1. The server must be started
with `FLEETYARD_AUTH__LOGIN_FAILURES_PER_ADDRESS=100000` and
`FLEETYARD_AUTH__LOGIN_FAILURES_PER_ACCOUNT=100000`, or `POST /auth/login` turns to 429 after 30.

Exit status: 0 when every role's run passed, 1 otherwise. Each role's output is printed, and a
deduplicated list of failures (check, operation, status) is printed at the end, from the
NDJSON event reports written to `--report-dir`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent

ALL_ROLES = ["agent", "ci", "donor", "admin", "logout"]

# Operations that are safe to hold fixed for every role.
COMMON = {
    "create_lease": {"query.wait": 0},
    "get_lease": {"query.wait": 0},
    "agent_work": {"query.wait": 0},
    "run_schedule": {"path.name": "liveness-sweep"},
}


def pinned_ids(role: str, ids: dict) -> dict[str, dict]:
    """Path ids per operation for `role`: reads hit real entities, irreversible writes hit spares."""
    donor = role == "donor"
    machine = ids["usage_machine"] if donor else ids["lab_machine"]
    spare_machine = ids["usage_spare_machine"] if donor else ids["lab_spare_machine"]
    pins = {
        "get_donation": ids["usage_donation"],
        "act_on_donation": ids["pending_donation"],
        "put_usage_policy": ids["pending_donation"],
        "get_donor": ids["donor"],
        "update_donor": ids["donor"] if donor else ids["donor_b"],
        "get_site": ids["donor_site"],
        "update_site": ids["donor_site"] if donor else ids["donor_b_site"],
        "update_user": ids["spare_user"],
        "change_service_token": ids["spare_service_token"],
        "revoke_service_token": ids["spare_service_token"],
        "get_machine": machine,
        "edit_labels": spare_machine,
        "transition_machine": spare_machine,
        "start_maintenance": spare_machine,
        "end_maintenance": spare_machine,
        "lift_quarantine": spare_machine,
        "request_ssh_probe": spare_machine,
        "issue_enrollment_token": spare_machine,
        "cut_off_machine_agent": spare_machine,
        "get_lease": ids["lease"],
        "extend_lease": ids["lease"],
        "release_lease": ids["lease"],
        "get_job": ids["job"],
        "job_output": ids["job"],
        "cancel_job": ids["job"],
        "job_finished": ids["job"],
        "job_output_from_agent": ids["job"],
        "update_webhook": ids["webhook"],
        "delete_webhook": ids["webhook"],
        "list_deliveries": ids["webhook"],
    }
    params = {op: dict(values) for op, values in COMMON.items()}
    for op, value in pins.items():
        params.setdefault(op, {})["path.id"] = value
    return params


def toml_value(value: object) -> str:
    return json.dumps(value)  # JSON strings and numbers are valid TOML


def write_config(directory: Path, role: str, seed: dict, args: argparse.Namespace) -> tuple[Path, Path]:
    tokens, ids = seed["tokens"], seed["ids"]
    # Web Fuzzing Commons auth: the role's identity, and its peer where there is one.
    identities = {
        "agent": [("agent", tokens["agent"])],
        "ci": [("ci", tokens["ci"]), ("ci_b", tokens["ci_b"])],
        "donor": [("donor", tokens["donor"]), ("donor_b", tokens["donor_b"])],
        "admin": [("admin", tokens["admin"])],
        "logout": [("logout", tokens["logout"])],
    }[role]
    wfc = {
        "schemaVersion": "1.0.0",
        "auth": [
            {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}
            for name, token in identities
        ],
    }
    wfc_path = directory / f"auth-{role}.json"
    wfc_path.write_text(json.dumps(wfc, indent=2))

    lines = [
        f"# Generated by tests/contract/schemathesis.py for the `{role}` run.",
        f"seed = {args.seed}",
        "workers = 1",
        # Every failing case of an operation, not only its first: the point is the whole list.
        "continue-on-failure = true",
        f"request-timeout = {args.request_timeout}",
        "[generation]",
        f"max-examples = {args.max_examples}",
        "deterministic = false",
        'database = "none"',
        "[phases.examples]",
        "enabled = true",
        "[phases.coverage]",
        "enabled = true",
        "[phases.fuzzing]",
        "enabled = true",
        "[phases.stateful]",
        "enabled = true",
        f"max-steps = {args.stateful_steps}",
        # What a schema-valid request may get besides success: refusals by rules no JSON Schema
        # states (see the module's docstring), each a 409 or a 422 that names the field.
        "[checks.positive_data_acceptance]",
        'expected-statuses = ["2xx", "401", "403", "404", "409", "422"]',
        "[auth.wfc]",
        f"path = {toml_value(str(wfc_path))}",
        f"user = {toml_value(identities[0][0])}",
    ]
    if len(identities) > 1:
        lines.append(f"peers = {toml_value([name for name, _ in identities])}")
    # Path ids come from a one-entry dictionary per operation, used for most (not all) cases, so
    # that reads reach a real entity while malformed and unknown ids are still tried.
    dictionaries = []
    for op, values in sorted(pinned_ids(role, ids).items()):
        bound = []
        for key, value in values.items():
            if key == "path.id":
                dictionaries += [f"[dictionaries.{op}]", f"values = [{toml_value(value)}]"]
                bound.append(f'"path.id" = {{ dictionary = {toml_value(op)}, probability = {args.id_probability} }}')
            else:
                bound.append(f"{toml_value(key)} = {toml_value(value)}")
        lines += ["[[operations]]", f"include-operation-id = {toml_value(op)}", "parameters = { " + ", ".join(bound) + " }"]
    lines += dictionaries
    config_path = directory / f"schemathesis-{role}.toml"
    config_path.write_text("\n".join(lines) + "\n")
    return config_path, wfc_path


def role_filters(role: str) -> list[str]:
    if role == "agent":
        return ["--include-path-regex", r"^/api/v1/agent/|^/healthz$|^/readyz$"]
    if role == "logout":
        return ["--include-operation-id", "logout"]
    return ["--exclude-operation-id", "logout"]


def run_role(bin_dir: Path, role: str, seed: dict, args: argparse.Namespace, work: Path, report_dir: Path) -> int:
    config, _ = write_config(work, role, seed, args)
    ndjson = report_dir / f"{role}.ndjson"
    command = [
        str(bin_dir / "schemathesis"),
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{args.base_url.rstrip('/')}/api/openapi.json",
        "--url",
        args.base_url.rstrip("/"),
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--report",
        "ndjson,junit",
        "--report-dir",
        str(report_dir),
        "--report-ndjson-path",
        str(ndjson),
        "--report-junit-path",
        str(report_dir / f"{role}.junit.xml"),
        "--output-truncate",
        "false",
        "--output-sanitize",
        "false",
        *role_filters(role),
    ]
    print(f"\n===== schemathesis: role {role} =====", flush=True)
    print(" ".join(command), flush=True)
    started = time.monotonic()
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    log = report_dir / f"{role}.log"
    with log.open("w") as out:
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work).returncode
    print(log.read_text(), flush=True)
    print(f"===== role {role}: exit {status} in {time.monotonic() - started:.0f} s =====", flush=True)
    return status


def summarise(report_dir: Path, roles: list[str]) -> None:
    """One entry per distinct failure, with the roles that saw it and one request that shows it.

    Distinct means: the same check, operation, status and error `code`; the fields that error
    bodies named are listed together.
    """
    roles_of: dict[tuple, set[str]] = defaultdict(set)
    fields_of: dict[tuple, set[str]] = defaultdict(set)
    examples: dict[tuple, dict] = {}
    for role in roles:
        path = report_dir / f"{role}.ndjson"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            for failure in iter_failures(event):
                key = (failure["check"], failure["operation"], str(failure["status"]), failure["code"])
                roles_of[key].add(role)
                fields_of[key].update(failure["fields"])
                examples.setdefault(key, failure)
    if not roles_of:
        return
    print(f"\n===== {len(roles_of)} distinct failures =====")
    for key in sorted(roles_of):
        check, operation, status, code = key
        example = examples[key]
        fields = f" fields: {', '.join(sorted(fields_of[key]))}" if fields_of[key] else ""
        print(f"- [{check}] {operation} -> {status} {code}{fields} (roles: {','.join(sorted(roles_of[key]))})")
        print(f"    {example['request']}")
        if example["response"]:
            print(f"    <- {example['response']}")


def decode(payload: object, limit: int = 400) -> str:
    if not isinstance(payload, dict):
        return ""
    if "$base64" in payload:
        try:
            text = base64.b64decode(payload["$base64"]).decode("utf-8", "replace")
        except ValueError:
            return ""
    else:
        text = str(payload.get("string", ""))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def error_of(body: str) -> tuple[str, list[str]]:
    """An error body's code and the fields it names."""
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        return "", []
    if not isinstance(parsed, dict) or "code" not in parsed:
        return "", []
    details = parsed.get("details")
    errors = details.get("errors") if isinstance(details, dict) else None
    fields = [e.get("field", "") for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    return str(parsed["code"]), fields


def iter_failures(event: dict):
    """Check failures from one NDJSON event (`ScenarioFinished` records carry them)."""
    recorder = (event.get("ScenarioFinished") or {}).get("recorder") or {}
    interactions = recorder.get("interactions") or {}
    for case_id, checks in (recorder.get("checks") or {}).items():
        for check in checks:
            if check.get("status") != "failure":
                continue
            failure = (check.get("failure_info") or {}).get("failure") or {}
            interaction = interactions.get(case_id) or {}
            request = interaction.get("request") or {}
            response = interaction.get("response") or {}
            body = decode(request.get("body"))
            answer = decode(response.get("content"))
            headers = request.get("headers") or {}
            content_type = (headers.get("Content-Type") or headers.get("content-type") or [""])[0]
            shown = f"{request.get('method', '')} {request.get('uri', '')}"
            if body:
                shown += f" [{content_type}] {body}"
            code, fields = error_of(decode(response.get("content"), 100_000))
            yield {
                "check": check.get("name", "?"),
                "operation": failure.get("operation") or recorder.get("label") or "?",
                "status": response.get("status_code", "-"),
                "code": code or failure.get("title") or "",
                "fields": fields,
                "request": shown,
                "response": answer,
            }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--seed-file", required=True, type=Path)
    parser.add_argument("--report-dir", type=Path)
    parser.add_argument("--roles", default=",".join(ALL_ROLES))
    parser.add_argument("--max-examples", type=int, default=15)
    parser.add_argument("--stateful-steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--id-probability", type=float, default=0.8, help="how often a path id is the seeded entity's"
    )
    parser.add_argument("--request-timeout", type=float, default=10.0)
    parser.add_argument(
        "--python-bin", type=Path, default=Path(sys.executable).parent, help="the venv's bin directory"
    )
    args = parser.parse_args()
    seed = json.loads(args.seed_file.read_text())
    roles = [r for r in args.roles.split(",") if r]
    unknown = set(roles) - set(ALL_ROLES)
    if unknown:
        parser.error(f"unknown roles {sorted(unknown)}")
    report_dir = args.report_dir or Path(tempfile.mkdtemp(prefix="fleetyard-schemathesis-"))
    report_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fleetyard-schemathesis-config-"))
    started = time.monotonic()
    failed = []
    try:
        for role in roles:
            if run_role(args.python_bin, role, seed, args, work, report_dir) != 0:
                failed.append(role)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summarise(report_dir, roles)
    verdict = f"failed: {', '.join(failed)}" if failed else "passed"
    print(f"\nschemathesis: {len(roles)} role runs {verdict} in {time.monotonic() - started:.0f} s; reports in {report_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
