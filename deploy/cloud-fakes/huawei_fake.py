#!/usr/bin/env python3
"""A fake Huawei Cloud ECS endpoint that checks every request's signature with the official
SDK signer (huaweicloudsdkcore.signer.signer.Signer) and keeps servers in memory, one region
per project id in the path.

    bin=$(deploy/need-python.sh)
    "$bin/python" deploy/cloud-fakes/huawei_fake.py --port 0 --ak AK --sk SK
    -> prints "listening http://127.0.0.1:PORT"; SIGTERM/SIGINT stops it.

API (paths as in huaweicloudsdkecs 3.1.219's ecs_client.py):
  POST /v1/{project_id}/cloudservers                  CreatePostPaidServers (X-Client-Token)
  GET  /v1/{project_id}/cloudservers/detail           ListServersDetails
  GET  /v1/{project_id}/cloudservers/{server_id}      ShowServer
  POST /v1/{project_id}/cloudservers/delete           DeleteServers
  POST /v1/{project_id}/cloudservers/{id}/tags/action BatchCreateServerTags / BatchDeleteServerTags
  GET  /v1/{project_id}/jobs/{job_id}                 ShowJob
The control API under /_fake/ is described in fakebase.py.

Signature check: the Authorization header is parsed (Access, SignedHeaders, Signature); an
SdkRequest is rebuilt from the request as received (method, raw path, the query's pairs as
decoded by parse_qsl, so a raw '+' is a space, only the headers named in SignedHeaders with
their received values, the exact body bytes) and signed with the SDK's Signer under the
configured AK/SK; the signatures must be equal. SignedHeaders must include host and
x-sdk-date; X-Sdk-Date must be within 15 minutes of now.

Error codes (HTTP status, body shape, source):
  | case                     | HTTP | code        | body / source                                                      |
  | bad/missing signature,   | 401  | APIGW.0301  | {"error_code","error_msg","request_id"}; API gateway error codes   |
  |   wrong AK, date skew    |      |             |   (devg-apisign api-sign-errorcode; "verify aksk signature fail")  |
  | auth fault               | 401  | APIGW.0301  | same                                                               |
  | throttle fault           | 429  | APIGW.0308  | "The throttling threshold has been reached: policy user over       |
  |                          |      |             |   ratelimit,limit:XX,time:1 minute" (API gateway error codes)      |
  | unknown path             | 404  | APIGW.0101  | "The API does not exist or has not been published..." (same)       |
  | capacity fault (create)  | 400  | Ecs.0319    | {"error":{"code","message"}}; ECS error codes: "Insufficient       |
  |                          |      |             |   flavor capacity." / "Check capacity: Capacity is not enough."    |
  | partial fault (create)   | 200  | (job)       | create answers normally; the job's failed sub_jobs carry           |
  |                          |      |             |   error_code Ecs.0319 and the job ends FAIL                        |
  | quota fault (create)     | 400  | Ecs.0001    | ECS error codes: "The number of ECSs is beyond the quota limit."   |
  | server_error fault       | 500  | Common.0001 | ECS error codes: "System error."                                   |
  | server not found         | 404  | Ecs.0114    | ECS error codes: "ECS [%s] could not be found."; KooCLI docs show  |
  |                          |      |             |   {"error":{"message":"Instance[abc] could not be found.",         |
  |                          |      |             |   "code":"Ecs.0114"}}                                              |
  | job not found            | 400  | Common.0011 | ECS error codes: "Invalid job ID." / "Failed to obtain the job."    |
  | invalid body/parameters  | 400  | Ecs.0005    | ECS error codes: "Invalid parameters." / "Invalid request body."   |
  | count out of 1..100      | 400  | Ecs.0913    | ECS error codes: "Invalid number of ECSs."                         |
  | name too long / chars    | 400  | Ecs.0914 / Ecs.0915 | ECS error codes                                            |
  | > 10 tags                | 400  | Ecs.0905    | ECS error codes                                                    |
  | unknown volumetype       | 400  | Ecs.0043    | ECS error codes: "Disk type [%s] does not exist."                  |
  | X-Client-Token reused    | 400  | Ecs.0005    | fake's choice: no published code for it; the generic               |
  |   with another body      |      |             |   invalid-parameter code, message names the token                  |
ECS error bodies are {"error":{"code","message"}} with an X-Request-Id header, as the SDK's
DefaultExceptionHandler parses them; gateway errors are {"error_code","error_msg","request_id"}.

Behaviour:
  * Create: required name, imageRef, flavorRef, vpcid, nics[0].subnet_id, root_volume.volumetype;
    count 1..100 (names get -0001, -0002, ... when count > 1: the docs say "a hyphen followed by a
    four-digit incremental number, such as -0000"; Huawei's own examples of batch names start at
    0001); user_data must be base64; server_tags [{key, value}] (at most 10); extendparam.marketType
    "spot" makes a spot server (the SDK's JSON key is marketType, camelCase; a snake_case
    market_type is refused here so that mistake shows). Answer 200 {"job_id", "serverIds"} with
    every id up front (serverIds is returned for the whole batch); the servers are BUILD until
    the job finishes (job_delay_secs), then ACTIVE. With a partial fault the first K succeed
    and the others' sub_jobs FAIL with Ecs.0319; those servers never exist; the job ends FAIL
    (SUCCESS only if every sub_job succeeded). dry_run: 202, nothing created.
  * Idempotency: X-Client-Token + the same body (compared as canonical JSON) answers exactly
    what the first successful answer was and creates nothing; another body gives Ecs.0005.
    Failed answers (faults, validation) are not remembered. Tokens are per project.
  * Delete: a job; the servers are marked deleted when it finishes. Deleting a server that is
    already deleted or being deleted succeeds again (idempotent); an id never seen gives a
    FAIL sub_job with Ecs.0114.
  * List: offset is a page number (0 and 1 are the first page), limit default 25, at most
    1000; filters name (substring), status, flavor, tags ("k=v", exact), not-tags, server_id
    (comma list, overrides the others; an unknown id gives an entry whose fields are all
    null except id and fault, as the API reference says). Newest first. count = all matches.
"""

import base64
import re
import sys
import uuid

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
import fakebase  # noqa: E402
from fakebase import ApiError, canonical_json, flavor_shape, iso, now, parse_sign_date  # noqa: E402

VOLUME_TYPES = {"SATA", "SAS", "SSD", "GPSSD", "ESSD", "GPSSD2", "ESSD2", "co-p1", "uh-l1"}
NAME_RE = re.compile(r"^[\w\-.\u4e00-\u9fff]+$")
AUTH_RE = re.compile(r"^SDK-HMAC-SHA256\s+Access=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9A-Fa-f]+)\s*$")
JOB_PATH = re.compile(r"^/v1/([^/]+)/jobs/([^/]+)$")
SERVER_PATH = re.compile(r"^/v1/([^/]+)/cloudservers/([^/]+)$")
TAGS_PATH = re.compile(r"^/v1/([^/]+)/cloudservers/([^/]+)/tags/action$")
CS_PATH = re.compile(r"^/v1/([^/]+)/cloudservers(/detail|/delete)?$")


def ecs_error(status, code, message):
    return ApiError(status, {"error": {"code": code, "message": message}}, code)


class HuaweiCloud(fakebase.FakeCloud):
    vendor = "huawei"

    def default_headers(self, req):
        return {"X-Request-Id": req.request_id}

    def gw_error(self, req, status, code, msg):
        return ApiError(status, {"error_code": code, "error_msg": msg, "request_id": req.request_id}, code)

    def auth_error(self, req, detail="verify aksk signature fail"):
        return self.gw_error(req, 401, "APIGW.0301", "Incorrect IAM authentication information: " + detail)

    def gateway_fault_error(self, req, fault):
        if fault["kind"] == "throttle":
            return self.gw_error(req, 429, "APIGW.0308",
                                 "The throttling threshold has been reached: policy user over ratelimit,limit:10,time:1 minute")
        if fault["kind"] == "auth":
            return self.auth_error(req)
        return ecs_error(500, "Common.0001", "System error.")

    def token_mismatch_error(self, key):
        return ecs_error(400, "Ecs.0005", "Invalid parameters: X-Client-Token [%s] has already been used by a "
                                          "request with different parameters." % key[1])

    # ---- routing ---------------------------------------------------------------------------

    def route(self, req):
        p, m = req.path, req.method
        mt = TAGS_PATH.match(p)
        if mt and m == "POST":
            req.op, req.region = "tag", mt.group(1)
            return lambda r: self.h_tags(r, mt.group(2))
        mj = JOB_PATH.match(p)
        if mj and m == "GET":
            req.op, req.region = "job", mj.group(1)
            return lambda r: self.h_job(r, mj.group(2))
        mc = CS_PATH.match(p)
        if mc:
            req.region = mc.group(1)
            sub = mc.group(2)
            if sub is None and m == "POST":
                req.op = "create"
                self.peek_create(req)
                return self.h_create
            if sub == "/detail" and m == "GET":
                req.op = "list"
                return self.h_list
            if sub == "/delete" and m == "POST":
                req.op = "delete"
                return self.h_delete
        ms = SERVER_PATH.match(p)
        if ms and m == "GET":
            req.op, req.region = "list", ms.group(1)
            return lambda r: self.h_show(r, ms.group(2))
        raise self.gw_error(req, 404, "APIGW.0101",
                            "The API does not exist or has not been published in the environment")

    def peek_create(self, req):
        """Best effort: what fault matching and the log need, before validation."""
        req.client_token = req.header("X-Client-Token")
        try:
            s = (req.json() or {}).get("server") or {}
            req.flavor = s.get("flavorRef")
            req.count = int(s.get("count", 1))
            ext = s.get("extendparam") or {}
            req.market = "spot" if ext.get("marketType") == "spot" else "on_demand"
        except Exception:
            pass

    # ---- signature -------------------------------------------------------------------------

    def verify_signature(self, req):
        auth = req.header("Authorization")
        if not auth:
            raise self.auth_error(req, "Authorization not found")
        m = AUTH_RE.match(auth.strip())
        if not m:
            raise self.auth_error(req, "Authorization header is malformed")
        access, signed, signature = m.groups()
        req.signed_headers = signed
        if access != self.ak:
            raise self.auth_error(req, "AK not found: %s" % access)
        names = signed.split(";")
        if "host" not in names or "x-sdk-date" not in names:
            raise self.auth_error(req, "host and x-sdk-date must be signed")
        date = req.header("X-Sdk-Date")
        ts = parse_sign_date(date)
        if ts is None:
            raise self.auth_error(req, "X-Sdk-Date is missing or malformed")
        if abs(now() - ts) > fakebase.SKEW_SECS:
            raise self.auth_error(req, "the request's X-Sdk-Date %s is more than 15 minutes off" % date)
        headers = {}
        for n in names:
            v = req.header(n)
            if v is None:
                raise self.auth_error(req, "signed header %s is missing" % n)
            headers[n] = v
        sdk_req = SdkRequest(method=req.method, schema="http", host=req.header("Host"),
                             resource_path=req.path, query_params=list(req.query_pairs),
                             header_params=headers, body=req.body or None)
        Signer(BasicCredentials(self.ak, self.sk)).sign(sdk_req)
        expected = AUTH_RE.match(sdk_req.header_params["Authorization"])
        if expected.group(2) != signed or expected.group(3) != signature:
            raise self.auth_error(req)

    # ---- rendering -------------------------------------------------------------------------

    def render_server(self, rec):
        ex = rec["extra"]
        vcpus, ram = flavor_shape(rec["flavor"])
        vpc = ex.get("vpcid") or "vpc-fake"
        meta = {"charging_mode": "2" if rec["market"] == "spot" else "0", "vpc_id": vpc,
                "metering.image_id": rec["image"], "metering.imagetype": "gold",
                "metering.resourcespeccode": "%s.linux" % rec["flavor"], "image_name": ex.get("image_name", rec["image"]),
                "os_type": "Linux", "os_bit": "64"}
        meta.update(ex.get("metadata") or {})
        return {
            "id": rec["id"],
            "name": rec["name"],
            "status": rec["status"],
            "created": iso(rec["created_at"]),
            "updated": iso(rec["updated_at"]),
            "flavor": {"id": rec["flavor"], "name": rec["flavor"], "disk": "0", "vcpus": str(vcpus),
                       "ram": str(ram * 1024)},
            "image": {"id": rec["image"]},
            "addresses": {vpc: [{"version": "4", "addr": rec["ip"], "OS-EXT-IPS:type": "fixed",
                                 "OS-EXT-IPS-MAC:mac_addr": rec["mac"], "OS-EXT-IPS:port_id": ex.get("port_id"),
                                 "primary": True}]},
            "metadata": meta,
            "tags": ["%s=%s" % (k, v) for k, v in rec["tags"].items()],
            "sys_tags": [{"key": "_sys_enterprise_project_id", "value": "0"}],
            "OS-EXT-AZ:availability_zone": rec["az"],
            "OS-EXT-STS:vm_state": {"BUILD": "building", "ACTIVE": "active", "SHUTOFF": "stopped",
                                    "ERROR": "error"}.get(rec["status"], "active"),
            "OS-EXT-STS:task_state": ex.get("task_state"),
            "OS-EXT-STS:power_state": 1 if rec["status"] == "ACTIVE" else 0,
            "OS-EXT-SRV-ATTR:user_data": rec["user_data_b64"],
            "OS-EXT-SRV-ATTR:hostname": rec["name"],
            "OS-SRV-USG:launched_at": iso(rec["updated_at"]) if rec["status"] == "ACTIVE" else "",
            "key_name": ex.get("key_name"),
            "security_groups": [{"id": sg.get("id"), "name": sg.get("id")} for sg in ex.get("security_groups", [])],
            "tenant_id": rec["region"],
            "user_id": "fake-user",
            "enterprise_project_id": "0",
            "description": ex.get("description", ""),
            "locked": False,
            "host_status": "UP",
            "fault": None,
            "progress": 100 if rec["status"] == "ACTIVE" else 0,
            "os-extended-volumes:volumes_attached": [{"id": ex.get("root_volume_id"), "bootIndex": "0",
                                                      "delete_on_termination": "true", "device": "/dev/vda"}],
        }

    def missing_server_entry(self, sid):
        keys = self.render_server(self.placeholder()).keys()
        out = {k: None for k in keys}
        out["id"] = sid
        out["fault"] = {"code": 404, "created": iso(now()), "message": "Instance[%s] could not be found." % sid,
                        "details": None}
        return out

    def placeholder(self):
        return {"id": "", "name": "", "status": "ACTIVE", "created_at": now(), "updated_at": now(), "flavor": "x",
                "image": "x", "market": "on_demand", "tags": {}, "az": None, "ip": "", "mac": "", "region": "",
                "user_data_b64": None, "extra": {}}

    def import_server(self, region, spec):
        rec = self.new_server(
            region=region, name=spec.get("name", "imported"), flavor=spec.get("flavor", "s6.small.1"),
            image=spec.get("image", "img-imported"), tags=dict(spec.get("tags") or {}),
            status=spec.get("status", "ACTIVE"), market=spec.get("market", "on_demand"),
            az=spec.get("az", "fake-az-1"), extra={"vpcid": spec.get("vpcid", "vpc-imported"),
                                                   "port_id": str(uuid.uuid4())})
        if spec.get("user_data") is not None:
            self.set_user_data(rec, base64.b64encode(spec["user_data"].encode()).decode())
        return rec

    def live(self, region):
        return [r for r in self.servers.values() if r["region"] == region and not r["deleted"]]

    # ---- create ----------------------------------------------------------------------------

    def validate_create(self, req):
        try:
            body = req.json()
        except Exception:
            raise ecs_error(400, "Ecs.0005", "Invalid request body.")
        if not isinstance(body, dict) or not isinstance(body.get("server"), dict):
            raise ecs_error(400, "Ecs.0005", "Invalid request body: server is required.")
        s = body["server"]

        def need(cond, what, code="Ecs.0005"):
            if not cond:
                raise ecs_error(400, code, "Invalid parameters: %s" % what)

        for f in ("name", "imageRef", "flavorRef", "vpcid"):
            need(isinstance(s.get(f), str) and s[f], "%s is required" % f)
        count = s.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100:
            raise ecs_error(400, "Ecs.0913", "Invalid number of ECSs: %r (1 to 100)." % (count,))
        max_len = 59 if count > 1 else 64
        if not 1 <= len(s["name"]) <= max_len:
            raise ecs_error(400, "Ecs.0914", "Invalid length of ECS name [%d] (at most %d)." % (len(s["name"]), max_len))
        if not NAME_RE.match(s["name"]):
            raise ecs_error(400, "Ecs.0915", "ECS name [%s] contains invalid characters." % s["name"])
        nics = s.get("nics")
        need(isinstance(nics, list) and nics and all(isinstance(n, dict) and n.get("subnet_id") for n in nics),
             "nics[].subnet_id is required")
        rv = s.get("root_volume")
        need(isinstance(rv, dict) and rv.get("volumetype"), "root_volume.volumetype is required")
        if rv["volumetype"] not in VOLUME_TYPES:
            raise ecs_error(400, "Ecs.0043", "Disk type [%s] does not exist." % rv["volumetype"])
        if "user_data" in s and s["user_data"] is not None:
            try:
                raw = fakebase.b64decode_strict(s["user_data"])
            except Exception:
                raise ecs_error(400, "Ecs.0005", "Invalid parameters: user_data must be base64 encoded.")
            need(len(raw) <= 32 * 1024, "user_data is larger than 32 KB before encoding")
        tags = {}
        for t in s.get("server_tags") or []:
            need(isinstance(t, dict) and isinstance(t.get("key"), str) and t["key"], "server_tags[].key is required")
            tags[t["key"]] = str(t.get("value", ""))
        for t in s.get("tags") or []:  # the older "key.value" form
            need(isinstance(t, str) and "." in t, "tags[] must be key.value")
            k, v = t.split(".", 1)
            tags[k] = v
        if len(tags) > 10:
            raise ecs_error(400, "Ecs.0905", "The number of tags cannot be greater than 10.")
        ext = s.get("extendparam") or {}
        need(isinstance(ext, dict), "extendparam must be an object")
        if "market_type" in ext:
            raise ecs_error(400, "Ecs.0005", "Invalid parameters: extendparam.market_type is not a field; the spot "
                                             "market is extendparam.marketType = \"spot\" (refused by the fake so the "
                                             "mistake shows; the real API would likely ignore it and buy on-demand).")
        market = ext.get("marketType")
        need(market in (None, "spot"), "extendparam.marketType must be \"spot\" when given")
        need(ext.get("chargingMode") in (None, 0, "0", "postPaid"), "this API only creates pay-per-use servers")
        return body, s, count, tags, ("spot" if market == "spot" else "on_demand")

    def h_create(self, req):
        body, s, count, tags, market = self.validate_create(req)
        token = req.client_token
        fingerprint = canonical_json(body)
        with self.lock:
            if token:
                prior = self.replay((req.region, token), fingerprint)
                if prior is not None:
                    return prior["status"], prior["body"], prior["headers"]
            fault = self.take_fault(req, {"capacity", "quota", "partial"})
            if fault and fault["kind"] == "capacity":
                raise ecs_error(400, "Ecs.0319", "Check capacity: Capacity is not enough.")
            if fault and fault["kind"] == "quota":
                raise ecs_error(400, "Ecs.0001", "The number of ECSs is beyond the quota limit.")
            if body.get("dry_run"):
                return 202, {}, {}
            succeed = count if not fault else max(0, min(count, fault["succeed"]))
            ids = [str(uuid.uuid4()) for _ in range(count)]
            subs = []
            for i, sid in enumerate(ids):
                ok = i < succeed
                subs.append({"server_id": sid, "ok": ok, "job_id": uuid.uuid4().hex,
                             "error_code": None if ok else "Ecs.0319",
                             "fail_reason": None if ok else "Check capacity: Capacity is not enough."})
                if not ok:
                    continue
                name = s["name"] if count == 1 else "%s-%04d" % (s["name"], i + 1)
                rec = self.new_server(
                    id=sid, region=req.region, name=name, flavor=s["flavorRef"], image=s["imageRef"], tags=dict(tags),
                    client_token=token, market=market, status="BUILD", az=s.get("availability_zone") or "fake-az-1",
                    extra={"vpcid": s["vpcid"], "subnet_id": s["nics"][0]["subnet_id"], "key_name": s.get("key_name"),
                           "security_groups": s.get("security_groups") or [], "metadata": s.get("metadata") or {},
                           "description": s.get("description", ""), "port_id": str(uuid.uuid4()),
                           "root_volume_id": str(uuid.uuid4()), "task_state": "spawning"})
                self.set_user_data(rec, s.get("user_data"))
            job = self.new_job(req.region, "createServer", "createSingleServer", subs)
            resp = {"job_id": job["id"], "serverIds": ids}
            if token:
                self.remember((req.region, token), fingerprint, 200, resp)
            return 200, resp, {}

    def new_job(self, region, job_type, sub_type, subs):
        job = {"id": uuid.uuid4().hex, "region": region, "type": job_type, "sub_type": sub_type, "subs": subs,
               "created_at": now(), "delay": self.job_delay(), "finished_at": None}
        self.jobs[job["id"]] = job
        self.tick()
        return job

    def finish_job(self, job):
        for sub in job["subs"]:
            rec = self.servers.get(sub["server_id"])
            if not sub["ok"] or rec is None:
                continue
            if job["type"] == "createServer" and not rec["deleted"]:
                rec["status"] = "ACTIVE"
                rec["updated_at"] = now()
                rec["extra"]["task_state"] = None
            elif job["type"] == "deleteServer" and not rec["deleted"]:
                rec["extra"]["task_state"] = None
                self.vanish(rec)

    # ---- other handlers --------------------------------------------------------------------

    def h_job(self, req, job_id):
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job["region"] != req.region:
                raise ecs_error(400, "Common.0011", "Failed to obtain the job.")
            t = now()
            done = job["finished_at"] is not None
            if done:
                status = "SUCCESS" if all(s["ok"] for s in job["subs"]) else "FAIL"
            else:
                status = "INIT" if t - job["created_at"] < min(0.05, job["delay"] / 4) else "RUNNING"
            begin = iso(job["created_at"], ms=True)
            end = iso(job["finished_at"], ms=True) if done else ""
            subs = []
            for s in job["subs"]:
                ent = {"server_id": s["server_id"]}
                if done and not s["ok"]:
                    ent["errorcode_message"] = s["fail_reason"]
                subs.append({"status": ("SUCCESS" if s["ok"] else "FAIL") if done else status,
                             "entities": ent, "job_id": s["job_id"], "job_type": job["sub_type"],
                             "begin_time": begin, "end_time": end,
                             "error_code": s["error_code"] if done else None,
                             "fail_reason": s["fail_reason"] if done else None})
            first_fail = next((s for s in job["subs"] if not s["ok"]), None) if done else None
            return 200, {
                "status": status,
                "entities": {"sub_jobs_total": len(subs), "sub_jobs": subs},
                "job_id": job["id"],
                "job_type": job["type"],
                "begin_time": begin,
                "end_time": end,
                "error_code": first_fail["error_code"] if first_fail else None,
                "fail_reason": first_fail["fail_reason"] if first_fail else None,
            }, {}

    def h_list(self, req):
        q = {}
        for k, v in req.query_pairs:
            q.setdefault(k, v)
        try:
            offset = int(q.get("offset", 1))
            limit = int(q.get("limit", 25))
        except ValueError:
            raise ecs_error(400, "Ecs.0005", "Invalid parameters: offset and limit must be integers.")
        if limit < 1 or limit > 1000 or offset < 0:
            raise ecs_error(400, "Ecs.0005", "Invalid parameters: limit must be 1..1000 and offset >= 0.")
        page = max(offset, 1)
        with self.lock:
            servers = self.live(req.region)
            if q.get("server_id"):
                wanted = [i for i in q["server_id"].split(",") if i]
                by_id = {r["id"]: r for r in servers}
                items = [self.render_server(by_id[i]) if i in by_id else self.missing_server_entry(i) for i in wanted]
            else:
                sel = servers
                if "name" in q:
                    sel = [r for r in sel if q["name"] in r["name"]]
                if "status" in q:
                    sel = [r for r in sel if r["status"] == q["status"].upper()]
                if "flavor" in q:
                    sel = [r for r in sel if r["flavor"] == q["flavor"]]
                if "tags" in q:
                    sel = [r for r in sel if q["tags"] in ["%s=%s" % kv for kv in r["tags"].items()]]
                if "not-tags" in q:
                    sel = [r for r in sel if q["not-tags"] not in ["%s=%s" % kv for kv in r["tags"].items()]]
                sel = sorted(sel, key=lambda r: (r["created_at"], r["name"]), reverse=True)
                items = [self.render_server(r) for r in sel]
            count = len(items)
            items = items[(page - 1) * limit: page * limit]
            return 200, {"count": count, "servers": items}, {}

    def h_show(self, req, sid):
        with self.lock:
            rec = self.servers.get(sid)
            if rec is None or rec["deleted"] or rec["region"] != req.region:
                raise ecs_error(404, "Ecs.0114", "Instance[%s] could not be found." % sid)
            return 200, {"server": self.render_server(rec)}, {}

    def h_delete(self, req):
        try:
            body = req.json()
        except Exception:
            raise ecs_error(400, "Ecs.0005", "Invalid request body.")
        if not isinstance(body, dict) or not isinstance(body.get("servers"), list) or not body["servers"]:
            raise ecs_error(400, "Ecs.0005", "Invalid parameters: servers is required.")
        ids = []
        for s in body["servers"]:
            if not isinstance(s, dict) or not isinstance(s.get("id"), str) or not s["id"]:
                raise ecs_error(400, "Ecs.0005", "Invalid parameters: servers[].id is required.")
            ids.append(s["id"])
        if len(ids) > 1000:
            raise ecs_error(400, "Ecs.0118", "The number of ECSs %d is greater than the maximum number 1000." % len(ids))
        for f in ("delete_publicip", "delete_volume"):
            if f in body and not isinstance(body[f], bool):
                raise ecs_error(400, "Ecs.0005", "Invalid parameters: %s must be a boolean." % f)
        req.count = len(ids)
        with self.lock:
            subs = []
            for sid in ids:
                rec = self.servers.get(sid)
                known = rec is not None and rec["region"] == req.region
                if known and not rec["deleted"]:
                    rec["extra"]["task_state"] = "deleting"
                subs.append({"server_id": sid, "ok": known, "job_id": uuid.uuid4().hex,
                             "error_code": None if known else "Ecs.0114",
                             "fail_reason": None if known else "ECS [%s] could not be found." % sid})
            job = self.new_job(req.region, "deleteServer", "deleteSingleServer", subs)
            return 200, {"job_id": job["id"]}, {}

    def h_tags(self, req, sid):
        try:
            body = req.json()
        except Exception:
            raise ecs_error(400, "Ecs.0005", "Invalid request body.")
        if not isinstance(body, dict) or body.get("action") not in ("create", "delete") \
                or not isinstance(body.get("tags"), list):
            raise ecs_error(400, "Ecs.0005", "Invalid parameters: action (create|delete) and tags are required.")
        for t in body["tags"]:
            if not isinstance(t, dict) or not isinstance(t.get("key"), str) or not t["key"]:
                raise ecs_error(400, "Ecs.0005", "Invalid parameters: tags[].key is required.")
        with self.lock:
            rec = self.servers.get(sid)
            if rec is None or rec["deleted"] or rec["region"] != req.region:
                raise ecs_error(404, "Ecs.0114", "Instance[%s] could not be found." % sid)
            tags = dict(rec["tags"])
            for t in body["tags"]:
                if body["action"] == "create":
                    tags[t["key"]] = str(t.get("value", ""))
                elif t["key"] in tags and ("value" not in t or tags[t["key"]] == t["value"]):
                    del tags[t["key"]]
            if len(tags) > 10:
                raise ecs_error(400, "Ecs.0905", "The number of tags cannot be greater than 10.")
            rec["tags"] = tags
            rec["updated_at"] = now()
            return 204, None, {}


if __name__ == "__main__":
    sys.exit(fakebase.main(HuaweiCloud, "Fake Huawei Cloud ECS"))
