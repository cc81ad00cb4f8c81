"""What the two fake clouds (huawei_fake.py, ctyun_fake.py) share: the HTTP server and CLI,
in-memory state under one lock, queued faults, the request log, idempotency records, async
jobs that finish after a delay, and the unsigned control API under /_fake/.

Control API (JSON, no signature):
  POST   /_fake/reset                    wipe everything (servers, jobs, tokens, faults, log, config)
  GET    /_fake/servers[?include_deleted=false]
  POST   /_fake/servers                  {"region", "servers": [{"name", "flavor", "image",
                                          "tags": {k: v}, "status"?, "market"?, "user_data"?, "az"?}]}
  POST   /_fake/servers/{id}/delete      the server vanishes out of band
  GET    /_fake/faults                   the queue
  POST   /_fake/faults                   one spec or a list: {"region": R|null,
                                          "op": create|list|delete|job|tag|any,
                                          "kind": capacity|quota|throttle|slow|partial|auth|server_error,
                                          "times": N (1; -1 = until cleared), "delay_secs": S (slow),
                                          "succeed": K (partial), "flavor": F|null, "market": spot|on_demand|null}
  DELETE /_fake/faults
  GET    /_fake/requests                 [{op, method, region, path, status, client_token, count,
                                          signature_ok, signed_headers, error_code, fault, at}]
  GET    /_fake/config, POST /_fake/config   {"job_delay_secs": S} (default 0.3)

Fault rules: faults are tried in queue order and the first that matches is used (times is
decremented; 0 removes it). A fault matches when its region is null or the request's, its op is
"any" or the request's, and its flavor/market are null or the request's (a request without a
flavor, such as a list, never matches a fault that names one). capacity, quota and partial only
apply to creates (an op "any" fault of those kinds waits for a create); throttle, auth,
server_error and slow apply to every op. slow sleeps delay_secs and then serves the request
normally, so a client that timed out may find the create done. Requests with a bad signature
are refused before any fault is looked at.
"""

import argparse
import base64
import copy
import datetime
import json
import signal
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

SKEW_SECS = 15 * 60
DEFAULT_JOB_DELAY = 0.3
CREATE_ONLY_KINDS = {"capacity", "quota", "partial"}
GATEWAY_KINDS = {"throttle", "auth", "server_error", "slow"}
KINDS = CREATE_ONLY_KINDS | GATEWAY_KINDS
OPS = {"create", "list", "delete", "job", "tag", "any"}


def now():
    return time.time()


def iso(ts, ms=False):
    dt = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    if ms:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_sign_date(value):
    """The yyyyMMddTHHmmssZ form both vendors use; None if malformed."""
    try:
        dt = datetime.datetime.strptime(value, "%Y%m%dT%H%M%SZ")
    except (TypeError, ValueError):
        return None
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def b64decode_strict(s):
    if not isinstance(s, str):
        raise ValueError("not a string")
    return base64.b64decode(s.encode("ascii"), validate=True)


def flavor_shape(flavor):
    """A plausible (vcpus, ram_gib) for names like s6.large.2 / c7.2xlarge.4."""
    sizes = {"small": 1, "medium": 1, "large": 2, "xlarge": 4}
    parts = str(flavor).split(".")
    vcpus, ratio = 2, 2
    if len(parts) >= 3:
        size = parts[1]
        if size in sizes:
            vcpus = sizes[size]
        elif size.endswith("xlarge") and size[:-6].isdigit():
            vcpus = 4 * int(size[:-6])
        if parts[2].isdigit():
            ratio = int(parts[2])
    return vcpus, vcpus * ratio


class ApiError(Exception):
    """An API answer other than success: HTTP status, body (dict or None), error code."""

    def __init__(self, status, body, code, headers=None):
        super().__init__(code)
        self.status = status
        self.body = body
        self.code = code
        self.headers = headers or {}


class Request:
    """What a handler sees of one API request."""

    def __init__(self, method, raw_path, headers, body):
        self.method = method
        self.raw_path = raw_path
        u = urlsplit(raw_path)
        self.path = u.path
        self.raw_query = u.query
        self.query_pairs = parse_qsl(u.query, keep_blank_values=True)
        self.headers = headers  # email.message.Message: case-insensitive get()
        self.body = body  # bytes
        self.request_id = uuid.uuid4().hex
        # Filled in by the vendor's routing/parsing, for the log and for fault matching.
        self.op = None
        self.region = None
        self.flavor = None
        self.market = None
        self.client_token = None
        self.count = None
        self.signature_ok = None
        self.signed_headers = None
        self.fault = None

    def header(self, name):
        return self.headers.get(name)

    def query(self):
        return dict(self.query_pairs)

    def json(self):
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))


class FakeCloud:
    """The state and the machinery; a vendor subclass supplies routing and answers."""

    vendor = "fake"

    def __init__(self, ak, sk):
        self.ak = ak
        self.sk = sk
        self.lock = threading.RLock()
        self.reset()

    # ---- state ---------------------------------------------------------------------------

    def reset(self):
        with self.lock:
            self.servers = {}  # id -> server record (dict)
            self.jobs = {}  # id -> job record (dict)
            self.tokens = {}  # key -> {"fingerprint", "status", "body", "headers"}
            self.faults = []
            self.log = []
            self.config = {"job_delay_secs": DEFAULT_JOB_DELAY}
            self.seq = 0

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def new_server(self, **fields):
        n = self.next_seq()
        rec = {
            "id": fields.pop("id", None) or str(uuid.uuid4()),
            "name": "",
            "region": None,
            "flavor": None,
            "image": None,
            "tags": {},
            "user_data": None,  # decoded text (or base64 if not UTF-8)
            "user_data_b64": None,
            "client_token": None,
            "created_at": now(),
            "updated_at": now(),
            "market": "on_demand",
            "status": None,
            "deleted": False,
            "deleted_at": None,
            "az": None,
            "ip": "192.168.%d.%d" % (n // 250, 10 + n % 240),
            "mac": "fa:16:3e:%02x:%02x:%02x" % ((n >> 16) & 255, (n >> 8) & 255, n & 255),
            "extra": {},
        }
        rec.update(fields)
        with self.lock:
            self.servers[rec["id"]] = rec
        return rec

    def set_user_data(self, rec, b64):
        if b64 is None:
            return
        rec["user_data_b64"] = b64
        raw = base64.b64decode(b64)
        try:
            rec["user_data"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            rec["user_data"] = b64

    def job_delay(self):
        return float(self.config.get("job_delay_secs", DEFAULT_JOB_DELAY))

    def tick(self):
        """Finish the jobs whose time has come (called under the lock on every request)."""
        t = now()
        for job in self.jobs.values():
            if job["finished_at"] is None and t >= job["created_at"] + job["delay"]:
                job["finished_at"] = t
                self.finish_job(job)

    def finish_job(self, job):
        raise NotImplementedError

    # ---- faults ----------------------------------------------------------------------------

    def add_fault(self, spec):
        kind = spec.get("kind")
        op = spec.get("op", "any")
        if kind not in KINDS:
            raise ApiError(400, {"error": "kind must be one of %s" % sorted(KINDS)}, "bad_fault")
        if op not in OPS:
            raise ApiError(400, {"error": "op must be one of %s" % sorted(OPS)}, "bad_fault")
        market = spec.get("market")
        if market not in (None, "spot", "on_demand"):
            raise ApiError(400, {"error": "market must be spot, on_demand or null"}, "bad_fault")
        fault = {
            "id": self.next_seq(),
            "region": spec.get("region"),
            "op": op,
            "kind": kind,
            "times": int(spec.get("times", 1)),
            "delay_secs": float(spec.get("delay_secs", 0) or 0),
            "succeed": int(spec.get("succeed", 0) or 0),
            "flavor": spec.get("flavor"),
            "market": market,
        }
        if fault["times"] == 0:  # nothing to do; -1 (any negative) means until cleared
            return fault
        with self.lock:
            self.faults.append(fault)
        return fault

    def take_fault(self, req, kinds):
        """The first queued fault matching req whose kind is in kinds; consumes one use."""
        with self.lock:
            for f in self.faults:
                if f["kind"] not in kinds:
                    continue
                if f["kind"] in CREATE_ONLY_KINDS and req.op != "create":
                    continue
                if f["op"] != "any" and f["op"] != req.op:
                    continue
                if f["region"] is not None and f["region"] != req.region:
                    continue
                if f["flavor"] is not None and f["flavor"] != req.flavor:
                    continue
                if f["market"] is not None and f["market"] != req.market:
                    continue
                if f["times"] > 0:
                    f["times"] -= 1
                    if f["times"] == 0:
                        self.faults.remove(f)
                req.fault = f["kind"]
                return dict(f)
        return None

    # ---- idempotency -----------------------------------------------------------------------

    def replay(self, key, fingerprint):
        """The stored answer for a token seen before with the same request; raises the
        vendor's mismatch error for the same token with a different request; None if new."""
        with self.lock:
            rec = self.tokens.get(key)
        if rec is None:
            return None
        if rec["fingerprint"] != fingerprint:
            raise self.token_mismatch_error(key)
        return rec

    def remember(self, key, fingerprint, status, body, headers=None):
        with self.lock:
            self.tokens[key] = {"fingerprint": fingerprint, "status": status, "body": copy.deepcopy(body),
                                "headers": dict(headers or {})}

    def token_mismatch_error(self, key):
        raise NotImplementedError

    # ---- vendor hooks ----------------------------------------------------------------------

    def route(self, req):
        """Sets req.op (and whatever it can of region etc.) and returns the handler, or raises
        ApiError for an unknown path."""
        raise NotImplementedError

    def verify_signature(self, req):
        """Raises the vendor's auth ApiError if the request's signature is not valid."""
        raise NotImplementedError

    def gateway_fault_error(self, req, fault):
        """The ApiError for a throttle/auth/server_error fault."""
        raise NotImplementedError

    def render_server(self, rec):
        """The server as the vendor's list API shows it."""
        raise NotImplementedError

    def import_server(self, region, spec):
        raise NotImplementedError

    def default_headers(self, req):
        return {}

    # ---- serving ---------------------------------------------------------------------------

    def serve_api(self, req):
        """Returns (status, body-or-None, headers)."""
        try:
            handler = self.route(req)
            try:
                self.verify_signature(req)
                req.signature_ok = True
            except ApiError:
                req.signature_ok = False
                raise
            fault = self.take_fault(req, GATEWAY_KINDS)
            if fault is not None:
                if fault["kind"] == "slow":
                    time.sleep(max(0.0, fault["delay_secs"]))
                else:
                    raise self.gateway_fault_error(req, fault)
            with self.lock:
                self.tick()
            status, body, headers = handler(req)
            return status, body, headers, None
        except ApiError as e:
            return e.status, e.body, e.headers, e.code

    def serve_control(self, method, raw_path, body):
        u = urlsplit(raw_path)
        path = u.path.rstrip("/")
        q = dict(parse_qsl(u.query, keep_blank_values=True))
        data = json.loads(body.decode("utf-8")) if body else {}
        with self.lock:
            self.tick()
        if path == "/_fake/reset" and method == "POST":
            self.reset()
            return 200, {"reset": True}
        if path == "/_fake/config":
            if method == "POST":
                with self.lock:
                    if "job_delay_secs" in data:
                        self.config["job_delay_secs"] = float(data["job_delay_secs"])
            return 200, dict(self.config)
        if path == "/_fake/faults":
            if method == "POST":
                if isinstance(data, list):
                    return 200, [self.add_fault(s) for s in data]
                return 200, self.add_fault(data)
            if method == "DELETE":
                with self.lock:
                    n = len(self.faults)
                    self.faults = []
                return 200, {"cleared": n}
            with self.lock:
                return 200, copy.deepcopy(self.faults)
        if path == "/_fake/requests" and method == "GET":
            with self.lock:
                return 200, copy.deepcopy(self.log)
        if path == "/_fake/servers":
            if method == "POST":
                region = data.get("region")
                if not region:
                    raise ApiError(400, {"error": "region is required"}, "bad_request")
                out = [self.control_view(self.import_server(region, s)) for s in data.get("servers", [])]
                return 200, out
            include_deleted = q.get("include_deleted", "true").lower() not in ("false", "0", "no")
            with self.lock:
                recs = sorted(self.servers.values(), key=lambda r: (r["created_at"], r["name"]))
                return 200, [self.control_view(r) for r in recs if include_deleted or not r["deleted"]]
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "servers" and parts[4] == "delete" and method == "POST":
            with self.lock:
                rec = self.servers.get(parts[3])
                if rec is None:
                    raise ApiError(404, {"error": "no such server"}, "not_found")
                self.vanish(rec)
                return 200, self.control_view(rec)
        raise ApiError(404, {"error": "unknown control path %s %s" % (method, path)}, "not_found")

    def vanish(self, rec):
        rec["deleted"] = True
        rec["deleted_at"] = now()

    def control_view(self, rec):
        out = {k: v for k, v in rec.items() if k not in ("extra", "user_data_b64")}
        out["created_at"] = iso(rec["created_at"])
        out["updated_at"] = iso(rec["updated_at"])
        out["deleted_at"] = iso(rec["deleted_at"]) if rec["deleted_at"] else None
        out["extra"] = copy.deepcopy(rec["extra"])
        out["api"] = self.render_server(rec)  # as the API showed it (still rendered once deleted)
        return out

    def record(self, req, status, error_code):
        entry = {
            "op": req.op,
            "method": req.method,
            "region": req.region,
            "path": req.path,
            "status": status,
            "client_token": req.client_token,
            "count": req.count,
            "signature_ok": req.signature_ok,
            "signed_headers": req.signed_headers,
            "error_code": error_code,
            "fault": req.fault,
            "at": iso(now(), ms=True),
        }
        with self.lock:
            self.log.append(entry)
        return entry


def make_handler(cloud):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FleetyardFake/1"

        def log_message(self, fmt, *args):  # replaced by one line per request in _serve
            pass

        def _read_body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n > 0 else b""

        def _send(self, status, body, headers):
            data = b""
            if body is not None:
                data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        def _serve(self):
            body = self._read_body()
            if self.path.startswith("/_fake/") or self.path == "/_fake":
                try:
                    status, out = cloud.serve_control(self.command, self.path, body)
                except ApiError as e:
                    status, out = e.status, e.body
                except Exception as e:  # a bug in the fake: say so loudly
                    traceback.print_exc()
                    status, out = 500, {"error": "fake crashed: %r" % (e,)}
                self._send(status, out, {})
                return
            req = Request(self.command, self.path, self.headers, body)
            try:
                status, out, headers, code = cloud.serve_api(req)
            except Exception as e:
                traceback.print_exc()
                status, out, headers, code = 500, {"error": "fake crashed: %r" % (e,)}, {}, "FAKE_CRASH"
            hdrs = dict(cloud.default_headers(req))
            hdrs.update(headers or {})
            entry = cloud.record(req, status, code)  # before the answer, so a client sees it logged
            self._send(status, out, hdrs)
            print("%s %s %s -> %d op=%s region=%s sig=%s%s%s" % (
                entry["at"], self.command, self.path, status, req.op, req.region,
                {True: "ok", False: "BAD", None: "-"}[req.signature_ok],
                " code=%s" % code if code else "", " fault=%s" % req.fault if req.fault else ""),
                file=sys.stderr, flush=True)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    return Handler


def main(cloud_class, description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--ak", required=True)
    ap.add_argument("--sk", required=True)
    if hasattr(cloud_class, "add_arguments"):
        cloud_class.add_arguments(ap)
    args = ap.parse_args()
    cloud = cloud_class(args.ak, args.sk)
    if hasattr(cloud, "configure"):
        cloud.configure(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(cloud))
    server.daemon_threads = True
    port = server.server_address[1]

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("listening http://%s:%d" % (args.host, port), flush=True)
    print("%s fake cloud on %s:%d" % (cloud.vendor, args.host, port), file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
