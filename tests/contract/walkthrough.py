#!/usr/bin/env python3
"""The README's walkthrough ("Try it: a riscv64 donation, end to end", then "Leases: CI runners"),
run through a Python client generated from the committed OpenAPI document.

It generates nothing itself: the caller generates the client first, from the committed file,

    openapi-python-client generate --path openapi/openapi.json --meta none \\
        --output-path "$tmp/fleetyard_api_client"
    PYTHONPATH="$tmp" walkthrough.py --base-url http://127.0.0.1:8080 \\
        --admin-email ops@example.org --admin-password '...'

and every call below goes through the generated typed API functions (`api.<tag>.<operation>`)
with request bodies built as the generated models (`Model.from_dict`) and responses parsed into
them, on a client that raises on any status the document does not list. Whatever the document
gets wrong about the wire (an enum spelled differently, a field typed wrong, a missing status)
therefore fails here: the run stops at the first deviation, names the step, and exits 1.

The steps, in the README's order (admin-made donors stand in for `seed-demo`'s):
ops log in; ops create two donors, each with a user and a site; the donor logs in and finds its
site; it registers two riscv64 boards (the REST form); the other donor gets 404 for it; a bad
form is refused naming the field; ops approve it (machines go `approved`, an enrollment token
each); ops find the board by donation; shipping a donor-hosted board is refused as an invalid
transition; ops take it through `onboarding` to `ready`; the audit log shows the moves; the donor
gets an enrollment token and an agent enrolls with it and beats (the facts of a riscv64 board);
a liveness sweep finds it healthy; ops issue a CI service token; CI asks for the board as the
Leases section does (with an Idempotency-Key) and gets it granted, or queued and then granted;
the same key replays the same lease; CI releases it; the donor pauses its donation and the board
leaves the pool (`paused_by_donor`).

Deviations from the README, each because the README relies on what a test cannot:
- the usage policy has no time windows (the README's is weekends only, which would make the
  lease wait for a weekend on other days) and starts yesterday (the README's date is fixed);
- the bad form leaves out the machines instead of giving 2026-02-30: a typed client cannot
  build an invalid date;
- the agent is the generated client's heartbeat call with a credential from the enrollment
  token, not a real `fleetyard-agent` (the README runs one on this computer, whose facts then
  contradict the riscv64 declaration; here the facts match, so that the board can be leased).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import sys
import time
import traceback
import uuid
from typing import Any


class Deviation(Exception):
    """The server or the generated client did not do what the README says."""


class Walkthrough:
    def __init__(self, package: str, base_url: str) -> None:
        self.package = importlib.import_module(package)
        self.models = importlib.import_module(f"{package}.models")
        self.errors = importlib.import_module(f"{package}.errors")
        self.base_url = base_url.rstrip("/")
        self.anonymous = self.package.Client(base_url=self.base_url, raise_on_unexpected_status=True, timeout=30.0)
        self.current = "setting up"

    def as_(self, token: str):
        return self.package.AuthenticatedClient(
            base_url=self.base_url, token=token, raise_on_unexpected_status=True, timeout=30.0
        )

    def model(self, name: str, data: dict) -> Any:
        """A request body as the generated model `name`, built from the wire's JSON."""
        return getattr(self.models, name).from_dict(data)

    def enum(self, name: str, wire: str) -> Any:
        """The generated enum `name`'s member for the wire's spelling."""
        try:
            return getattr(self.models, name)(wire)
        except ValueError as error:
            members = [str(m.value) for m in getattr(self.models, name)]
            raise Deviation(f"the generated enum {name} has no {wire!r} (it has {members})") from error

    def call(self, tag: str, operation: str, client, expect: int | tuple[int, ...], *args, **kwargs):
        """Calls the generated `api.<tag>.<operation>.sync_detailed`; checks the status; returns parsed."""
        module = importlib.import_module(f"{self.package.__name__}.api.{tag}.{operation}")
        response = module.sync_detailed(*args, client=client, **kwargs)
        wanted = expect if isinstance(expect, tuple) else (expect,)
        if int(response.status_code) not in wanted:
            raise Deviation(
                f"{tag}.{operation}: expected HTTP {wanted}, got {int(response.status_code)}: "
                f"{response.content[:600].decode(errors='replace')}"
            )
        if response.parsed is None and response.content:
            raise Deviation(f"{tag}.{operation}: the generated client parsed nothing from {response.content[:300]!r}")
        return response

    @contextlib.contextmanager
    def step(self, name: str):
        self.current = name
        started = time.monotonic()
        try:
            yield
        except Deviation as deviation:
            raise SystemExit(self.fail(name, str(deviation)))
        except self.errors.UnexpectedStatus as error:
            raise SystemExit(self.fail(name, f"a status the document does not list: {error}"))
        except Exception as error:  # noqa: BLE001 - any exception is a failed step, reported with its trace
            detail = "".join(traceback.format_exception(error)[-6:])
            raise SystemExit(self.fail(name, f"{type(error).__name__}: {error}\n{detail}"))
        print(f"ok   {name} ({time.monotonic() - started:.2f} s)", flush=True)

    @staticmethod
    def fail(name: str, why: str) -> int:
        print(f"FAIL {name}\n     {why}", file=sys.stderr, flush=True)
        print(f"walkthrough: FAILED at step: {name}", file=sys.stderr, flush=True)
        return 1


def expect_equal(what: str, got: Any, want: Any) -> None:
    if str(got) != str(want):
        raise Deviation(f"{what}: expected {want!r}, got {got!r}")


def run(w: Walkthrough, admin_email: str, admin_password: str) -> None:
    run_id = uuid.uuid4().hex[:8]
    password = "plumtree-demo-pass-0123"

    with w.step("ops log in"):
        login = w.model("LoginRequest", {"email": admin_email, "password": admin_password})
        ops_token = w.call("auth", "login", w.anonymous, 200, body=login).parsed.token
        ops = w.as_(ops_token)
        me = w.call("auth", "me", ops, 200).parsed
        expect_equal("the ops user's role", me.role, "admin")

    donors: dict[str, dict] = {}
    for key, name, zone in (("plum", "Plumtree Semiconductor", "Asia/Shanghai"),
                            ("west", "Westlake Open Hardware Lab", "Europe/Berlin")):
        with w.step(f"ops create donor {name} with a user and a site"):
            donor = w.call("donors", "create_donor", ops, 201, body=w.model("NewDonorRequest", {
                "name": f"{name} {run_id}", "kind": "company", "time_zone": zone,
                "contacts": [{"name": "Mei", "email": f"mei@{key}.example"}]})).parsed
            email = f"ops-{run_id}@{key}.example"
            w.call("users", "create_user", ops, 201, body=w.model("NewUserRequest", {
                "email": email, "display_name": "Staff", "password": password, "role": "donor",
                "donor_id": str(donor.id)}))
            w.call("sites", "create_site", ops, 201, body=w.model("NewSiteRequest", {
                "name": f"{name} lab {run_id}", "kind": "donor_site", "donor_id": str(donor.id),
                "time_zone": zone}))
            donors[key] = {"id": donor.id, "email": email}

    with w.step("the donors log in"):
        for key in donors:
            login = w.model("LoginRequest", {"email": donors[key]["email"], "password": password})
            donors[key]["client"] = w.as_(w.call("auth", "login", w.anonymous, 200, body=login).parsed.token)
        plum, west = donors["plum"]["client"], donors["west"]["client"]

    with w.step("the donor finds its own site (GET /sites?kind=donor_site)"):
        sites = w.call("sites", "list_sites", plum, 200, kind=w.enum("SiteKind", "donor_site")).parsed
        if len(sites.items) != 1:
            raise Deviation(f"expected the donor's one site, got {len(sites.items)}")
        site = sites.items[0].id

    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    form = {
        "model": "usage_right", "site_id": str(site), "agreement_ref": f"PLUM-2026-{run_id}", "starts_on": yesterday,
        "usage_policy": {"purposes": ["ci", "test"], "windows": [], "max_concurrent_leases": 2,
                         "max_lease_minutes": 240},
        "machines": [
            {"arch": "riscv64", "cpu_model": "Sophgo SG2044", "cpu_cores": 64, "memory_mib": 65536, "disk_gib": 512,
             "asset_tag": f"PLUM-RV-{run_id}-0", "labels": {"board": "sg2044-evb"},
             "ssh": {"host": "rv100.plumtree.example", "user": "fleetyard"}},
            {"arch": "riscv64", "cpu_model": "Sophgo SG2044", "cpu_cores": 64, "memory_mib": 65536, "disk_gib": 512,
             "asset_tag": f"PLUM-RV-{run_id}-1"},
        ],
    }
    with w.step("the donor registers two riscv64 boards (POST /donations)"):
        donation = w.call("donations", "create_donation", plum, 201, body=w.model("DonationForm", form)).parsed
        expect_equal("the new donation's status", donation.status, "submitted")
        expect_equal("its machines' lifecycle", sorted({str(m.lifecycle) for m in donation.machines}),
                     ["pending_review"])

    with w.step("another donor cannot see it (404 donation-not-found)"):
        missing = w.call("donations", "get_donation", west, 404, donation.id).parsed
        expect_equal("the error code", missing.code, "donation-not-found")

    with w.step("bad input is refused, naming the field, and nothing is written"):
        bad = dict(form, agreement_ref=f"BAD-{run_id}", machines=[])
        refused = w.call("donations", "create_donation", plum, 422, body=w.model("DonationForm", bad)).parsed
        expect_equal("the error code", refused.code, "validation-failed")
        details = refused.details if isinstance(refused.details, dict) else {}
        fields = [e.get("field") for e in details.get("errors", []) if isinstance(e, dict)]
        if "machines" not in fields:
            raise Deviation(f"the refusal does not name `machines`: {refused.to_dict()}")
        listed = w.call("donations", "list_donations", plum, 200).parsed
        if len(listed.items) != 1:
            raise Deviation(f"expected one donation after the refusal, got {len(listed.items)}")

    with w.step("ops approve it; its machines move from pending_review to approved"):
        action = w.model("DonationActionRequest", {"action": "approve", "note": "welcome"})
        approved = w.call("donations", "act_on_donation", ops, 200, donation.id, body=action).parsed
        expect_equal("the donation's status", approved.status, "approved")
        expect_equal("its machines' lifecycle", sorted({str(m.lifecycle) for m in approved.machines}), ["approved"])
        if len(approved.enrollment_tokens) != 2:
            raise Deviation(f"expected an enrollment token per machine, got {len(approved.enrollment_tokens)}")

    with w.step("ops find the board by donation (GET /machines?donation_id=)"):
        machines = w.call("machines", "list_machines", ops, 200, donation_id=donation.id).parsed
        board = next((m for m in machines.items if m.asset_tag == form["machines"][0]["asset_tag"]), None)
        if board is None:
            raise Deviation(f"the board is not among {[m.asset_tag for m in machines.items]}")
        board_id = board.id

    def transition(client, to: str, expect: int):
        body = w.model("TransitionRequest", {"to": to})
        return w.call("machines", "transition_machine", client, expect, board_id, body=body).parsed

    with w.step("shipping a donor-hosted board is refused (409 invalid-transition)"):
        refused = transition(ops, "in_transit", 409)
        expect_equal("the error code", refused.code, "invalid-transition")

    with w.step("ops onboard the board: onboarding, then ready"):
        for to in ("onboarding", "ready"):
            moved = transition(ops, to, 200)
            expect_equal("the board's lifecycle", moved.lifecycle, to)

    with w.step("the audit log tells the story (GET /audit?entity_id=, as the donor)"):
        trail = w.call("audit", "list_audit", plum, 200, entity_id=board_id).parsed
        actions = [e.action for e in trail.items]
        if not actions:
            raise Deviation("the board's audit trail is empty")
        after = [str(e.after.get("lifecycle")) if isinstance(e.after, dict) else "-" for e in trail.items]
        if "ready" not in after:
            raise Deviation(f"no audit entry shows the board `ready`: {list(zip(actions, after))}")

    with w.step("the donor asks for an enrollment token; an agent enrolls with it"):
        issued = w.call("machines", "issue_enrollment_token", plum, 201, board_id).parsed
        facts = {"arch": "riscv64", "kernel": "6.6.0", "os_release": "openEuler 24.03 (LTS)",
                 "cpu_model": "Sophgo SG2044", "cpu_count": 64, "memory_mib": 65536, "disk_gib": 512,
                 "hostname": "rv100"}
        enroll = w.model("EnrollRequest", {"token": issued.token, "facts": facts})
        credential = w.call("agents", "enroll", w.anonymous, 200, body=enroll).parsed
        expect_equal("the credential's machine", credential.machine_id, board_id)
        agent = w.as_(credential.credential)

    with w.step("the agent beats (POST /agent/heartbeat, with its facts)"):
        beat = w.model("HeartbeatRequest", {
            "agent_version": "walkthrough", "sent_at": dt.datetime.now(dt.UTC).isoformat(),
            "facts": facts,
            "metrics": {"load1": 0.2, "load5": 0.2, "load15": 0.2, "uptime_secs": 3600, "disk_used_pct": 12.5,
                        "memory_available_mib": 60000}})
        w.call("agents", "heartbeat", agent, 200, body=beat)

    with w.step("a liveness sweep finds the board healthy"):
        for _ in range(50):
            time.sleep(0.1)
            w.call("system", "run_schedule", ops, 200, "liveness-sweep")
            machine = w.call("machines", "get_machine", plum, 200, board_id).parsed
            if str(machine.health) == "healthy":
                break
        else:
            raise Deviation(f"the board stayed {machine.health}: {machine.health_reason}")
        if machine.monitoring and getattr(machine.monitoring, "mismatches", None):
            raise Deviation(f"matching facts were flagged: {machine.monitoring.mismatches}")

    with w.step("ops issue a CI service token (POST /service-tokens)"):
        issued = w.call("service_tokens", "issue_service_token", ops, 201, body=w.model("NewServiceTokenRequest", {
            "name": f"ci-gate-{run_id}", "expires_in_days": 30, "tenants": ["*"]})).parsed
        ci = w.as_(issued.token)

    lease_request = {
        "requirements": {"arch": "riscv64", "min_cores": 4, "min_memory_gib": 8, "labels": {"board": "sg2044-evb"}},
        "purpose": "ci", "duration_minutes": 120, "tenant": "sig-riscv", "priority": 50,
        # A real key's public half (its private half was thrown away).
        "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILVjmbQrrjMjIKmVHPh9LzW7bdh39ug3WrFJ/ljZQOCE ci@runner"}
    key = f"pipeline-8812-job-3-{run_id}"
    with w.step("CI asks for a riscv64 runner (POST /leases?wait=5, Idempotency-Key)"):
        answer = w.call("leases", "create_lease", ci, (201, 202), body=w.model("LeaseRequest", lease_request),
                        wait=5, idempotency_key=key)
        lease = answer.parsed
        for _ in range(10):
            if str(lease.state) != "queued":
                break
            lease = w.call("leases", "get_lease", ci, 200, lease.id, wait=5).parsed
        expect_equal("the lease's state", lease.state, "granted")
        expect_equal("the lease's machine", lease.machine_id, board_id)
        expect_equal("the connection's host", lease.connection.host, "rv100.plumtree.example")
        if not lease.expires_at:
            raise Deviation("a granted lease has no expires_at")

    with w.step("the same Idempotency-Key returns the same lease (200, idempotent-replayed)"):
        replay = w.call("leases", "create_lease", ci, 200, body=w.model("LeaseRequest", lease_request), wait=0,
                        idempotency_key=key)
        expect_equal("the replayed lease", replay.parsed.id, lease.id)
        expect_equal("the idempotent-replayed header", replay.headers.get("idempotent-replayed"), "true")

    with w.step("CI releases the lease"):
        released = w.call("leases", "release_lease", ci, 200, lease.id).parsed
        expect_equal("the lease's state", released.state, "released")

    with w.step("the donor pauses its donation; its ready board leaves the pool"):
        action = w.model("DonationActionRequest", {"action": "pause", "note": "release week"})
        paused = w.call("donations", "act_on_donation", plum, 200, donation.id, body=action).parsed
        expect_equal("the donation's status", paused.status, "paused")
        board_now = next(m for m in paused.machines if m.id == board_id)
        expect_equal("the board's lifecycle", board_now.lifecycle, "paused_by_donor")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--admin-email", required=True)
    parser.add_argument("--admin-password", required=True)
    parser.add_argument("--package", default="fleetyard_api_client", help="the generated client's import name")
    args = parser.parse_args()
    try:
        w = Walkthrough(args.package, args.base_url)
    except ImportError as error:
        print(f"walkthrough: cannot import the generated client `{args.package}`: {error}", file=sys.stderr)
        print("walkthrough: FAILED at step: importing the generated client", file=sys.stderr)
        return 1
    started = time.monotonic()
    run(w, args.admin_email, args.admin_password)
    print(f"walkthrough: passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
