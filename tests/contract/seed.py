#!/usr/bin/env python3
"""Seeds a running Fleetyard server for the contract run (tests/contract/schemathesis.py).

Given the server's base URL and an admin session, it creates, through the API alone, what
Schemathesis needs so that reads by id can succeed and writes have something to act on, and
prints it all as one JSON object on stdout (tokens and ids; diagnostics go to stderr):

- tokens: `admin`, `donor` (donor A's user), `donor_b` (a second donor's user, the peer for
  the object-level authorization check), `logout` (a session of a user of its own, for the
  logout run), `ci` and `ci_b` (service tokens for any tenant; the
  second is the CI peer), `agent` (the credential of a lab machine's agent);
- ids of real entities: the foundation lab, both donors, their sites and users, a spare user
  and a spare service token to change and revoke, a pending donation, an approved usage-right
  donation with a ready machine and a spare one, a foundation-lab donation whose machine is
  ready, healthy (its agent beat) and leased to CI, the lease, a job, a webhook.

Entities that the fuzzer may change for good (revoke, disable, cut off, withdraw, transition)
are spares that no token of the run depends on.

    seed.py --base-url http://127.0.0.1:8080 --admin-token TOKEN > seed.json
    seed.py --base-url http://127.0.0.1:8080 --admin-email E --admin-password P > seed.json

Only httpx (raw requests): seeding is set-up, not what the contract run checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime

import httpx

PASSWORD = "contract-run-password-0123"


class SeedError(RuntimeError):
    pass


class Api:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/api/v1", timeout=30.0)

    def call(self, method: str, path: str, token: str | None, body: object = None, expect: int | tuple = 200):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = self.http.request(method, path, headers=headers, json=body)
        wanted = expect if isinstance(expect, tuple) else (expect,)
        if response.status_code not in wanted:
            raise SeedError(f"{method} {path}: expected {wanted}, got {response.status_code}: {response.text[:800]}")
        return response.json() if response.content else None


def log(message: str) -> None:
    print(f"seed: {message}", file=sys.stderr)


def seed(api: Api, admin: str) -> dict:
    run = uuid.uuid4().hex[:8]
    me = api.call("GET", "/auth/me", admin)
    out: dict = {"tokens": {"admin": admin}, "ids": {"admin_user": me["id"]}}
    ids, tokens = out["ids"], out["tokens"]

    lab = api.call(
        "POST",
        "/sites",
        admin,
        {"name": f"Contract Lab {run}", "kind": "foundation_lab", "country": "CN", "time_zone": "Asia/Shanghai"},
        201,
    )
    ids["lab_site"] = lab["id"]

    def donor(letter: str) -> tuple[dict, str]:
        made = api.call(
            "POST",
            "/donors",
            admin,
            {
                "name": f"Contract Donor {letter} {run}",
                "kind": "company",
                "time_zone": "Asia/Shanghai",
                "contacts": [{"name": "Mei", "email": f"mei-{letter}@example.org"}],
            },
            201,
        )
        email = f"staff-{letter}-{run}@donor{letter}.example"
        user = api.call(
            "POST",
            "/users",
            admin,
            {"email": email, "display_name": f"Staff {letter}", "password": PASSWORD, "role": "donor",
             "donor_id": made["id"]},
            201,
        )
        site = api.call(
            "POST",
            "/sites",
            admin,
            {"name": f"Donor {letter} site {run}", "kind": "donor_site", "donor_id": made["id"],
             "time_zone": "Asia/Shanghai"},
            201,
        )
        token = api.call("POST", "/auth/login", None, {"email": email, "password": PASSWORD})["token"]
        return {"donor": made["id"], "user": user["id"], "site": site["id"]}, token

    a, tokens["donor"] = donor("a")
    b, tokens["donor_b"] = donor("b")
    ids.update({"donor": a["donor"], "donor_user": a["user"], "donor_site": a["site"],
                "donor_b": b["donor"], "donor_b_user": b["user"], "donor_b_site": b["site"]})

    spare_user = api.call(
        "POST",
        "/users",
        admin,
        {"email": f"spare-{run}@donora.example", "display_name": "Spare", "password": PASSWORD, "role": "donor",
         "donor_id": a["donor"]},
        201,
    )
    ids["spare_user"] = spare_user["id"]
    # A user whose session the `logout` run ends (logging out ends every session of its user).
    logout_email = f"logout-{run}@donorb.example"
    logout_user = api.call(
        "POST",
        "/users",
        admin,
        {"email": logout_email, "display_name": "Logout", "password": PASSWORD, "role": "donor",
         "donor_id": b["donor"]},
        201,
    )
    ids["logout_user"] = logout_user["id"]
    tokens["logout"] = api.call("POST", "/auth/login", None, {"email": logout_email, "password": PASSWORD})["token"]

    def service_token(name: str) -> dict:
        return api.call(
            "POST", "/service-tokens", admin, {"name": f"{name}-{run}", "tenants": ["*"], "expires_in_days": 30}, 201
        )

    ci = service_token("contract-ci")
    ci_b = service_token("contract-ci-b")
    spare_token = service_token("contract-spare")
    tokens["ci"], tokens["ci_b"] = ci["token"], ci_b["token"]
    ids.update({"ci_token": ci["id"], "ci_b_token": ci_b["id"], "spare_service_token": spare_token["id"]})

    def machine(arch: str, tag: str) -> dict:
        return {"arch": arch, "cpu_model": "Contract CPU", "cpu_cores": 8, "memory_mib": 16384, "disk_gib": 256,
                "asset_tag": f"{tag}-{run}", "labels": {"board": "contract"}}

    policy = {"purposes": ["ci", "test", "build"], "windows": [], "max_concurrent_leases": 4,
              "max_lease_minutes": 600}
    today = datetime.now(UTC).date().isoformat()

    # A usage-right donation left pending review (for donation actions and its usage policy).
    pending = api.call(
        "POST",
        "/donations",
        tokens["donor"],
        {"model": "usage_right", "site_id": a["site"], "agreement_ref": f"C-PENDING-{run}", "starts_on": today,
         "usage_policy": policy, "machines": [machine("riscv64", "C-PEND-0")]},
        201,
    )
    ids["pending_donation"] = pending["id"]
    ids["pending_machine"] = pending["machines"][0]["id"]

    # An approved usage-right donation: one machine ready, one left approved (a spare to move).
    usage = api.call(
        "POST",
        "/donations",
        tokens["donor"],
        {"model": "usage_right", "site_id": a["site"], "agreement_ref": f"C-USAGE-{run}", "starts_on": today,
         "usage_policy": policy, "machines": [machine("riscv64", "C-RV-0"), machine("riscv64", "C-RV-1")]},
        201,
    )
    api.call("POST", f"/donations/{usage['id']}/actions", admin, {"action": "approve", "note": "contract"})
    ids["usage_donation"] = usage["id"]
    ids["usage_machine"], ids["usage_spare_machine"] = (m["id"] for m in usage["machines"])
    for to in ("onboarding", "ready"):
        api.call("POST", f"/machines/{ids['usage_machine']}/transitions", admin, {"to": to})

    # A foundation-lab donation (lent by donor A): machine 0 ready, healthy and leased; machine 1 spare.
    lab_donation = api.call(
        "POST",
        "/donations",
        tokens["donor"],
        {"model": "ownership", "site_id": lab["id"], "agreement_ref": f"C-LAB-{run}", "starts_on": today,
         "machines": [machine("x86_64", "C-X86-0"), machine("x86_64", "C-X86-1")]},
        201,
    )
    approved = api.call("POST", f"/donations/{lab_donation['id']}/actions", admin, {"action": "approve"})
    ids["lab_donation"] = lab_donation["id"]
    ids["lab_machine"], ids["lab_spare_machine"] = (m["id"] for m in lab_donation["machines"])
    steps = [{"to": "in_transit"}, {"to": "received", "location": {"rack": "R1", "slot": "U1"}},
             {"to": "onboarding"}, {"to": "ready"}]
    for step in steps:
        api.call("POST", f"/machines/{ids['lab_machine']}/transitions", admin, step)
    enrollment = next(t["token"] for t in approved["enrollment_tokens"] if t["machine_id"] == ids["lab_machine"])

    # Its agent enrolls and beats; a liveness sweep then finds it healthy.
    facts = {"arch": "x86_64", "kernel": "6.6.0", "os_release": "openEuler 24.03 (LTS)",
             "cpu_model": "Contract CPU", "cpu_count": 8, "memory_mib": 16384, "disk_gib": 256}
    credential = api.call("POST", "/agent/enroll", None, {"token": enrollment, "facts": facts})
    tokens["agent"] = credential["credential"]
    beat = {"agent_version": "contract", "sent_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "facts": facts,
            "metrics": {"load1": 0.1, "load5": 0.1, "load15": 0.1, "uptime_secs": 100, "disk_used_pct": 10.0,
                        "memory_available_mib": 8000}}
    api.call("POST", "/agent/heartbeat", tokens["agent"], beat)
    for _ in range(100):
        time.sleep(0.1)
        api.call("POST", "/schedules/liveness-sweep/run", admin)
        if api.call("GET", f"/machines/{ids['lab_machine']}", admin)["health"] == "healthy":
            break
    else:
        raise SeedError("the lab machine did not turn healthy after its heartbeat and liveness sweeps")

    lease = api.call(
        "POST",
        "/leases?wait=0",
        tokens["ci"],
        {"requirements": {"arch": "x86_64"}, "purpose": "ci", "duration_minutes": 120, "tenant": "contract",
         "max_wait_minutes": 0, "placement": "lab"},
        (200, 201, 202),
    )
    if lease["state"] != "granted":
        # Only on a database that already has queued leases (a second seeding): they go first.
        log(f"warning: the seeded lease is {lease['state']}, not granted ({lease.get('end_reason')})")
    ids["lease"] = lease["id"]
    job = api.call(
        "POST",
        "/jobs",
        tokens["ci"],
        {"requirements": {"arch": "riscv64"}, "purpose": "test", "command": "true", "timeout_secs": 60,
         "tenant": "contract", "placement": "lab"},
        (200, 201),
    )
    ids["job"] = job["id"]
    # Loopback and a port nothing listens on: deliveries (if ever run) go nowhere.
    hook = api.call("POST", "/webhooks", admin, {"url": "http://127.0.0.1:9/contract", "description": "contract"},
                    201)
    ids["webhook"] = hook["id"]
    log(f"seeded run {run}: lease {lease['state']}, job {job['state']}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--admin-token")
    parser.add_argument("--admin-email")
    parser.add_argument("--admin-password")
    args = parser.parse_args()
    api = Api(args.base_url)
    token = args.admin_token
    if not token:
        if not (args.admin_email and args.admin_password):
            parser.error("give --admin-token, or --admin-email and --admin-password")
        token = api.call("POST", "/auth/login", None, {"email": args.admin_email, "password": args.admin_password})[
            "token"]
    try:
        print(json.dumps(seed(api, token), indent=2))
    except SeedError as error:
        print(f"seed: FAILED: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
