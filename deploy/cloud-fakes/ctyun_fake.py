#!/usr/bin/env python3
"""A fake China Telecom Cloud (CTyun) ECS endpoint (OpenAPI v4 behind the EOP gateway) that
checks every request's signature with the official SDK signer
(ctyun_python_sdk_core.sign_util.sign, PyPI ctyun-python-sdk-core) and keeps instances in
memory, one region per regionID.

    bin=$(deploy/need-python.sh)
    "$bin/python" deploy/cloud-fakes/ctyun_fake.py --port 0 --ak AK --sk SK
    -> prints "listening http://127.0.0.1:PORT"; SIGTERM/SIGINT stops it.

API (paths and fields as in PyPI ctyunsdk-ecs20220909 2.0.2 and ctyun-it/ctyun-sdk-go):
  POST /v4/ecs/create-instance          one instance (no count field)      -> masterOrderID
  POST /v4/ecs/batch-create-instances   orderCount 1..50 of the same kind  -> masterOrderID
  GET  /v4/ecs/order/query-uuid?masterOrderID=   -> orderStatus, instanceIDList
  POST /v4/ecs/list-instances           regionID, pageNo, pageSize <= 50, instanceIDList
                                        ("id1,id2", a string), labelList, instanceName, state, keyword
  GET  /v4/ecs/instance-details?regionID=&instanceID=
  POST /v4/ecs/unsubscribe-instance     release: on-demand instances are deleted, cycle
                                        (prepaid) ones become "unsubscribed"  -> masterOrderID
  POST /v4/ecs/destroy-instance         ONLY for cycle instances already unsubscribed (the
                                        SDK: "销毁一台包周期已退订云主机"); an on-demand or
                                        running instance is refused (see the table)
  POST /v4/ecs/batch-operate-label      regionID, instanceIDList (string), operateType BIND|UNBIND, labelList
  GET  /v4/ecs/query-async-result?regionID=&jobID=   (no operation here returns a jobID; unknown ids)
The control API under /_fake/ is described in fakebase.py.

Signature check: headers ctyun-eop-request-id, Eop-date, Eop-Authorization
("{ak} Headers=ctyun-eop-request-id;eop-date Signature={base64}"; other signed-header lists are
refused, as neither SDK makes them); the expected value is sign_util.sign(Credential(ak, sk),
params, body, request_id, eop_date) with params = the received query decoded by parse_qsl into a
dict (a raw '+' is a space; a repeated key keeps its last value) and body = the exact received
body (UTF-8). Eop-date must be within 15 minutes of now read as Beijing time: CTyun's EOP
signing guide says "Eop-date: 时间，15分钟有效期(实际传时间为北京东八区UTC+8时间。TZ仅为格式，非UTC
时间。)", i.e. UTC+8 wall-clock time with a literal Z, and both official SDKs stamp local time
(datetime.now() / time.Now()). --eop-date-utc-offset-hours (default 8) changes that.

Envelope: {"statusCode": 800|900, "errorCode", "error", "message", "description", "returnObj"};
API failures are HTTP 200 with statusCode 900 (SDK models: "800为成功，900为失败"; errorCode is a
"product.module.code三段式码"). Gateway refusals (signature, throttling) use a non-200 status: the
official Python SDK's handle_response treats any status outside 200..300 as an error body
"兼容IT CTAPI网关的报错格式" with statusCode/message; the fake sends the same envelope there, so
classify those by HTTP status first.

Error codes (HTTP, errorCode, source):
  | case                        | HTTP | errorCode                    | source                                      |
  | bad/missing signature,      | 401  | Eop.Auth.SignatureInvalid    | fake's choice (no published gateway code    |
  |   unknown AK                |      |   / Eop.Auth.AccessKeyInvalid|   found); the status is what to rely on     |
  | Eop-date > 15 min off       | 401  | Eop.Auth.RequestExpired      | fake's choice; 15 min from the EOP guide    |
  | auth fault                  | 401  | Eop.Auth.SignatureInvalid    | same                                        |
  | throttle fault              | 429  | Eop.Gateway.Throttled        | fake's choice                               |
  | server_error fault          | 500  | Ecs.Server.InternalError     | fake's choice                               |
  | unknown path                | 404  | Eop.Gateway.ApiNotFound      | fake's choice                               |
  | capacity fault              | 200  | Ecs.Flavor.SoldOut           | fake's choice ("已售罄" is the docs' word    |
  |                             |      |                              |   for an unavailable flavor)                |
  | quota fault                 | 200  | Ecs.Quota.Insufficient       | fake's choice (docs: "用户配额")             |
  | partial fault               | 200  | (order)                      | create answers normally; the order ends "3" |
  |                             |      |                              |   with only K ids, or "5" if K = 0          |
  | instance not found          | 200  | Ecs.Instance.NotFound        | ctyun-it/terraform-provider-ctyun           |
  |                             |      |                              |   internal/common/error_code.go             |
  | order not found             | 200  | Ecs.Order.NotFound           | fake's choice                               |
  | invalid parameters, and     | 200  | Openapi.Parameter.Error      | seen in third-party CTyun client fixtures;  |
  |   clientToken reused with   |      |                              |   no dedicated code is published for a      |
  |   another body              |      |                              |   token/body mismatch                       |
  | instanceName already used   | 200  | Ecs.Instance.NameDuplicated  | fake's choice; the SDK docs: "不可以使用已存在 |
  |                             |      |                              |   的云主机名称"                              |
  | destroy-instance on an      | 200  | Ecs.Instance.StatusNotSupport| fake's choice                               |
  |   instance not unsubscribed |      |                              |                                             |
  | async job not found         | 200  | Ecs.Job.NotFound             | fake's choice                               |

Behaviour:
  * create-instance has no count; batch-create-instances has orderCount 1..50 (SDK model:
    "购买数量，取值范围：[1, 50]"). Batch names: instanceName/displayName with "{R:n}" get n, n+1,
    ... in its place; otherwise "-0001", "-0002", ... is appended (the docs allow 2-59 chars when
    creating several, i.e. 5 characters are added; the exact suffix is unverified).
  * onDemand is required; onDemand:false (包周期, prepaid) is refused unless cycleType
    (MONTH|YEAR) and cycleCount are given, to catch the monthly-billing trap.
  * The SDK sends every optional field, null when unset; null is treated as absent.
  * Orders: orderStatus "14" (开通中) while running, then "3" (完成) with instanceIDList, or "5"
    (施工失败) when nothing was created. The same values come from the official Terraform
    provider's order looper (14 = keep polling, 3 = done, anything else = failure) and the SDK's
    list (1 待支付, 2 已支付, 3 完成, 4 取消, 5 施工失败, 7 正在支付中, ... 14 开通中 ...).
    instanceIDList is [] until the order is done. Release orders also go 14 -> 3.
  * Instances are "creating" until the order finishes, then "running"; released on-demand
    instances disappear from the API (marked deleted in the control API); cycle instances go
    "unsubscribing" -> "unsubscribed" and stay listed until destroy-instance.
  * list-instances results carry no labels (neither SDK's result model has a labelList); labels
    are visible in the control API. labelList filters (every given label must match). Labels
    bind at once here (the real API: "0~10分钟" later).
  * Idempotency: clientToken (account-wide: "要求单个云平台账户内唯一"), same body (canonical JSON,
    nulls dropped) replays the first successful answer and creates nothing; another body gives
    Openapi.Parameter.Error. Failed answers are not remembered. Releasing an instance already
    released or being released succeeds again with a new order; an id never seen gives
    Ecs.Instance.NotFound.
"""

import base64
import re
import sys
import time
import uuid

from ctyun_python_sdk_core import sign_util
from ctyun_python_sdk_core.credential import Credential

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
import fakebase  # noqa: E402
from fakebase import ApiError, canonical_json, flavor_shape, iso, now, parse_sign_date  # noqa: E402

AUTH_RE = re.compile(r"^(\S+) Headers=(\S+) Signature=(\S+)$")
NAME_SEG = re.compile(r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$")
PATTERN = re.compile(r"\{R:(\d+)\}")
STATE_MAP = {"active": "running", "shutoff": "stopped", "unsubscribed": "unsubscribed", "expired": "expired",
             "freezing": "freezing", "shelve": "shelve"}


def strip_nones(v):
    if isinstance(v, dict):
        return {k: strip_nones(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_nones(x) for x in v]
    return v


def api_error(code, message, description="", http=200):
    return ApiError(http, {"statusCode": 900, "errorCode": code, "error": code, "message": message,
                           "description": description or message, "returnObj": None}, code)


def param_error(message, description="请求参数错误"):
    return api_error("Openapi.Parameter.Error", message, description)


def ok(obj):
    return 200, {"statusCode": 800, "errorCode": "", "error": "", "message": "SUCCESS", "description": "成功",
                 "returnObj": obj}, {}


class CtyunCloud(fakebase.FakeCloud):
    vendor = "ctyun"
    date_offset_hours = 8.0

    @classmethod
    def add_arguments(cls, ap):
        ap.add_argument("--eop-date-utc-offset-hours", type=float, default=8.0,
                        help="the time zone Eop-date is read in (CTyun: Beijing time, 8)")

    def configure(self, args):
        self.date_offset_hours = args.eop_date_utc_offset_hours

    def default_headers(self, req):
        return {"x-trace-id": req.request_id}

    def gw_error(self, status, code, message, description):
        return api_error(code, message, description, http=status)

    def gateway_fault_error(self, req, fault):
        if fault["kind"] == "throttle":
            return self.gw_error(429, "Eop.Gateway.Throttled", "Too many requests, slow down", "请求过于频繁")
        if fault["kind"] == "auth":
            return self.gw_error(401, "Eop.Auth.SignatureInvalid", "signature verification failed", "签名校验失败")
        return api_error("Ecs.Server.InternalError", "internal server error", "系统内部错误", http=500)

    def token_mismatch_error(self, key):
        return param_error("clientToken %s was already used by a request with different parameters" % key,
                           "客户端存根已被参数不同的请求使用")

    # ---- routing ---------------------------------------------------------------------------

    def route(self, req):
        p, m = req.path.rstrip("/"), req.method
        routes = {
            ("POST", "/v4/ecs/create-instance"): ("create", lambda r: self.h_create(r, batch=False)),
            ("POST", "/v4/ecs/batch-create-instances"): ("create", lambda r: self.h_create(r, batch=True)),
            ("GET", "/v4/ecs/order/query-uuid"): ("job", self.h_order),
            ("GET", "/v4/ecs/query-async-result"): ("job", self.h_async),
            ("POST", "/v4/ecs/list-instances"): ("list", self.h_list),
            ("GET", "/v4/ecs/instance-details"): ("list", self.h_details),
            ("POST", "/v4/ecs/unsubscribe-instance"): ("delete", lambda r: self.h_release(r, destroy=False)),
            ("POST", "/v4/ecs/destroy-instance"): ("delete", lambda r: self.h_release(r, destroy=True)),
            ("POST", "/v4/ecs/batch-operate-label"): ("tag", self.h_label),
        }
        hit = routes.get((m, p))
        if hit is None:
            raise self.gw_error(404, "Eop.Gateway.ApiNotFound", "API %s %s not found" % (m, p), "接口不存在")
        req.op = hit[0]
        self.peek(req)
        return hit[1]

    def peek(self, req):
        """Best effort: region, flavor, token and count for fault matching and the log."""
        q = req.query()
        req.region = q.get("regionID")
        if req.path.rstrip("/").endswith("/order/query-uuid"):
            with self.lock:
                job = self.jobs.get(q.get("masterOrderID"))
                req.region = job["region"] if job else None
        try:
            body = req.json()
        except Exception:
            body = None
        if isinstance(body, dict):
            req.region = body.get("regionID") or req.region
            req.client_token = body.get("clientToken")
            if req.op == "create":
                req.flavor = body.get("flavorID") or body.get("flavorName")
                req.market = "on_demand"
                try:
                    req.count = int(body.get("orderCount") or 1)
                except (TypeError, ValueError):
                    req.count = None

    # ---- signature -------------------------------------------------------------------------

    def verify_signature(self, req):
        rid = req.header("ctyun-eop-request-id")
        date = req.header("Eop-date")
        auth = req.header("Eop-Authorization")
        if not rid or not date or not auth:
            raise self.gw_error(401, "Eop.Auth.SignatureInvalid",
                                "ctyun-eop-request-id, Eop-date and Eop-Authorization are required", "缺少签名请求头")
        m = AUTH_RE.match(auth.strip())
        if not m:
            raise self.gw_error(401, "Eop.Auth.SignatureInvalid", "malformed Eop-Authorization", "签名格式错误")
        ak, headers, _sig = m.groups()
        req.signed_headers = headers
        if ak != self.ak:
            raise self.gw_error(401, "Eop.Auth.AccessKeyInvalid", "access key %s not found" % ak, "AK不存在")
        if headers != "ctyun-eop-request-id;eop-date":
            raise self.gw_error(401, "Eop.Auth.SignatureInvalid",
                                "the fake verifies Headers=ctyun-eop-request-id;eop-date only", "签名头不支持")
        ts = parse_sign_date(date)
        if ts is None:
            raise self.gw_error(401, "Eop.Auth.SignatureInvalid", "malformed Eop-date %r" % date, "时间格式错误")
        if abs(now() - (ts - self.date_offset_hours * 3600)) > fakebase.SKEW_SECS:
            raise self.gw_error(401, "Eop.Auth.RequestExpired",
                                "Eop-date %s is more than 15 minutes off (it is read as UTC%+g wall-clock time)"
                                % (date, self.date_offset_hours), "请求时间已过期")
        try:
            body = req.body.decode("utf-8") if req.body else None
        except UnicodeDecodeError:
            raise self.gw_error(401, "Eop.Auth.SignatureInvalid", "body is not UTF-8", "签名校验失败")
        params = dict(req.query_pairs)
        expected = sign_util.sign(Credential(self.ak, self.sk), params, body, rid, date)
        if expected.strip() != auth.strip():
            raise self.gw_error(401, "Eop.Auth.SignatureInvalid", "signature verification failed", "签名校验失败")

    # ---- rendering -------------------------------------------------------------------------

    def render_server(self, rec):
        ex = rec["extra"]
        vcpus, ram = flavor_shape(ex.get("flavorName") or rec["flavor"])
        sgs = ex.get("secGroupList") or []
        subnet = ex.get("subnetID", "subnet-fake")
        return {
            "projectID": ex.get("projectID") or "0",
            "azName": rec["az"],
            "attachedVolume": [],
            "addresses": [{"vpcName": ex.get("vpcID", "vpc-fake"),
                           "addressList": [{"addr": rec["ip"], "version": 4, "type": "fixed", "isMaster": True,
                                            "macAddress": rec["mac"]}]}],
            "resourceID": ex.get("resourceID"),
            "instanceID": rec["id"],
            "displayName": ex.get("displayName", rec["name"]),
            "instanceName": rec["name"],
            "osType": 1,
            "instanceStatus": rec["status"],
            "expiredTime": iso(rec["created_at"] + 30 * 86400) if not ex.get("onDemand", True) else "",
            "availableDay": None,
            "updatedTime": iso(rec["updated_at"]),
            "createdTime": iso(rec["created_at"]),
            "zabbixName": rec["id"],
            "secGroupList": [{"securityGroupID": sg, "securityGroupName": sg} for sg in sgs],
            "privateIP": rec["ip"],
            "privateIPv6": "",
            "networkCardList": [{"IPv4Address": rec["ip"], "IPv6Address": [], "subnetID": subnet,
                                 "subnetCidr": "192.168.0.0/16", "isMaster": True, "gateway": "192.168.0.1",
                                 "networkCardID": ex.get("nicID"), "securityGroup": sgs}],
            "vipInfoList": [],
            "vipCount": 0,
            "affinityGroup": None,
            "image": {"imageID": rec["image"], "imageName": rec["image"], "supportXssd": False},
            "flavor": {"flavorID": ex.get("flavorID") or rec["flavor"], "flavorName": ex.get("flavorName") or rec["flavor"],
                       "flavorCPU": vcpus, "flavorRAM": ram, "gpuType": None, "gpuCount": None, "gpuVendor": None,
                       "videoMemSize": None},
            "onDemand": ex.get("onDemand", True),
            "vpcName": ex.get("vpcID", "vpc-fake"),
            "vpcID": ex.get("vpcID", "vpc-fake"),
            "fixedIPList": [rec["ip"]],
            "floatingIP": "",
            "subnetIDList": [subnet],
            "keypairName": ex.get("keyPairID") or "",
            "delegateName": "",
            "deletionProtection": False,
            "remainingDay": None,
            "releaseTime": "",
            "instanceDescription": ex.get("instanceDescription") or "",
            "metadata": {},
            "trustInstance": False,
        }

    def import_server(self, region, spec):
        rec = self.new_server(
            region=region, name=spec.get("name", "imported"), flavor=spec.get("flavor", "s7.large.2"),
            image=spec.get("image", "img-imported"), tags=dict(spec.get("tags") or {}),
            status=spec.get("status", "running"), market="on_demand", az=spec.get("az", "cn-fake-az1"),
            extra={"displayName": spec.get("name", "imported"), "flavorName": spec.get("flavor", "s7.large.2"),
                   "onDemand": True, "resourceID": uuid.uuid4().hex, "nicID": "port-" + uuid.uuid4().hex[:10],
                   "vpcID": spec.get("vpcID", "vpc-imported")})
        if spec.get("user_data") is not None:
            self.set_user_data(rec, base64.b64encode(spec["user_data"].encode()).decode())
        return rec

    def live(self, region):
        return [r for r in self.servers.values() if r["region"] == region and not r["deleted"]]

    # ---- create ----------------------------------------------------------------------------

    def body_of(self, req):
        try:
            body = req.json()
        except Exception:
            raise param_error("request body is not JSON")
        if not isinstance(body, dict):
            raise param_error("request body must be a JSON object")
        return strip_nones(body)

    @staticmethod
    def check_name(name, max_len, what):
        base = PATTERN.sub("1", name, count=1)
        if "{" in base or "}" in base or ":" in base:
            raise param_error("%s: only one {R:n} pattern is allowed" % what)
        if not 2 <= len(base) <= max_len:
            raise param_error("%s must be 2-%d characters" % (what, max_len))
        if what == "instanceName":
            segs = base.split(".")
            if not all(NAME_SEG.match(s) for s in segs) or base.isdigit():
                raise param_error("instanceName may hold letters, digits, '-' and '.', not start or end with "
                                  "'-' or '.', not repeat them, and not be only digits")

    def validate_create(self, body, batch):
        def need(cond, message):
            if not cond:
                raise param_error(message)

        for f in ("clientToken", "regionID", "instanceName", "displayName", "azName", "imageID", "bootDiskType",
                  "vpcID", "extIP"):
            need(isinstance(body.get(f), str) and body[f], "%s is required" % f)
        need(body.get("flavorID") or body.get("flavorName"), "flavorID or flavorName is required")
        need(body.get("imageType") in (0, 1, 2, 3, 4), "imageType must be 0..4")
        size = body.get("bootDiskSize")
        need(isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= 2048, "bootDiskSize must be 1..2048")
        on_demand = body.get("onDemand")
        need(isinstance(on_demand, bool), "onDemand (true: 按需, false: 按周期) is required")
        if on_demand is False:
            need(body.get("cycleType") in ("MONTH", "YEAR") and isinstance(body.get("cycleCount"), int)
                 and body["cycleCount"] > 0,
                 "onDemand=false buys a cycle (monthly/yearly, prepaid) instance and needs cycleType and cycleCount; "
                 "send onDemand=true for pay-as-you-go")
        nics = body.get("networkCardList")
        need(isinstance(nics, list) and nics and all(isinstance(n, dict) and isinstance(n.get("subnetID"), str)
                                                     and n["subnetID"] and isinstance(n.get("isMaster"), bool)
                                                     for n in nics),
             "networkCardList needs [{isMaster, subnetID}]")
        need(sum(1 for n in nics if n["isMaster"]) == 1, "networkCardList needs exactly one isMaster=true")
        need(body["extIP"] in (("0", "1") if batch else ("0", "1", "2")), "extIP must be \"0\", \"1\" or \"2\"")
        if body["extIP"] == "1":
            need(isinstance(body.get("bandwidth"), int), "extIP=\"1\" needs bandwidth")
        if "userData" in body:
            try:
                fakebase.b64decode_strict(body["userData"])
            except Exception:
                raise param_error("userData must be base64")
            need(1 <= len(body["userData"]) <= 16384, "userData must be 1-16384 characters after base64")
        labels = {}
        for lab in body.get("labelList") or []:
            need(isinstance(lab, dict) and isinstance(lab.get("labelKey"), str) and isinstance(lab.get("labelValue"), str)
                 and 1 <= len(lab["labelKey"]) <= 32 and 1 <= len(lab["labelValue"]) <= 32,
                 "labelList needs [{labelKey, labelValue}] of 1-32 characters")
            need(lab["labelKey"] not in labels, "labelList repeats the key %s" % lab["labelKey"])
            labels[lab["labelKey"]] = lab["labelValue"]
        need(len(labels) <= 10, "at most 10 labels")
        sgs = body.get("secGroupList")
        need(sgs is None or (isinstance(sgs, list) and all(isinstance(x, str) for x in sgs)),
             "secGroupList must be a list of ids")
        count = 1
        if batch:
            count = body.get("orderCount", 1)
            need(isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 50, "orderCount must be 1..50")
        elif "orderCount" in body:
            raise param_error("create-instance creates one instance; use batch-create-instances with orderCount")
        self.check_name(body["instanceName"], 59 if count > 1 else 64, "instanceName")
        self.check_name(body["displayName"], 63, "displayName")
        return count, labels

    @staticmethod
    def batch_names(name, count):
        if count == 1 and not PATTERN.search(name):
            return [name]
        m = PATTERN.search(name)
        if m:
            start = int(m.group(1))
            return [PATTERN.sub(str(start + i), name, count=1) for i in range(count)]
        return ["%s-%04d" % (name, i + 1) for i in range(count)]

    def h_create(self, req, batch):
        body = self.body_of(req)
        count, labels = self.validate_create(body, batch)
        token = body["clientToken"]
        region = body["regionID"]
        fingerprint = canonical_json(body)
        with self.lock:
            prior = self.replay(token, fingerprint)
            if prior is not None:
                return prior["status"], prior["body"], prior["headers"]
            names = self.batch_names(body["instanceName"], count)
            displays = self.batch_names(body["displayName"], count)
            taken = {r["name"] for r in self.live(region)}
            dup = [n for n in names if n in taken] or ([names[0]] if len(set(names)) != len(names) else [])
            if dup:
                raise api_error("Ecs.Instance.NameDuplicated", "instanceName %s is already used" % dup[0],
                                "云主机名称已存在")
            fault = self.take_fault(req, {"capacity", "quota", "partial"})
            if fault and fault["kind"] == "capacity":
                raise api_error("Ecs.Flavor.SoldOut", "the flavor is sold out in this zone", "规格已售罄")
            if fault and fault["kind"] == "quota":
                raise api_error("Ecs.Quota.Insufficient", "quota exceeded for instances, vCPUs or memory", "用户配额不足")
            succeed = count if not fault else max(0, min(count, fault["succeed"]))
            ids = []
            nic = body["networkCardList"][0]
            for i in range(succeed):
                rec = self.new_server(
                    region=region, name=names[i], flavor=body.get("flavorID") or body.get("flavorName"),
                    image=body["imageID"], tags=dict(labels), client_token=token, market="on_demand",
                    status="creating", az=body["azName"],
                    extra={"displayName": displays[i], "flavorID": body.get("flavorID"), "flavorName": body.get("flavorName"),
                           "onDemand": body["onDemand"], "vpcID": body["vpcID"], "subnetID": nic["subnetID"],
                           "secGroupList": body.get("secGroupList") or [], "keyPairID": body.get("keyPairID"),
                           "projectID": body.get("projectID"), "resourceID": uuid.uuid4().hex,
                           "nicID": "port-" + uuid.uuid4().hex[:10], "instanceDescription": body.get("instanceDescription"),
                           "billing": "on_demand" if body["onDemand"] else "cycle:%s:%s" % (body["cycleType"], body["cycleCount"])})
                self.set_user_data(rec, body.get("userData"))
                ids.append(rec["id"])
            order = self.new_order(region, "create", ids, count)
            ret = {"masterOrderID": order["id"], "masterOrderNO": order["no"], "masterResourceID": uuid.uuid4().hex,
                   "regionID": region}
            status, out, headers = ok(ret)
            self.remember(token, fingerprint, status, out, headers)
            return status, out, headers

    def new_order(self, region, kind, ids, count):
        n = self.next_seq()
        order = {"id": uuid.uuid4().hex, "no": time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "%06d" % n,
                 "region": region, "kind": kind, "ids": list(ids), "count": count, "created_at": now(),
                 "delay": self.job_delay(), "finished_at": None}
        self.jobs[order["id"]] = order
        self.tick()
        return order

    def finish_job(self, order):
        for sid in order["ids"]:
            rec = self.servers.get(sid)
            if rec is None or rec["deleted"]:
                continue
            if order["kind"] == "create" and rec["status"] == "creating":
                rec["status"] = "running"
            elif order["kind"] == "unsubscribe":
                if rec["extra"].get("onDemand", True):
                    self.vanish(rec)
                else:
                    rec["status"] = "unsubscribed"
            elif order["kind"] == "destroy":
                self.vanish(rec)
            rec["updated_at"] = now()

    # ---- other handlers --------------------------------------------------------------------

    def h_order(self, req):
        oid = req.query().get("masterOrderID")
        if not oid:
            raise param_error("masterOrderID is required")
        with self.lock:
            order = self.jobs.get(oid)
            if order is None:
                raise api_error("Ecs.Order.NotFound", "order %s not found" % oid, "订单不存在")
            if order["finished_at"] is None:
                return ok({"orderStatus": "14", "instanceIDList": []})
            if order["kind"] == "create" and not order["ids"]:
                return ok({"orderStatus": "5", "instanceIDList": []})
            return ok({"orderStatus": "3", "instanceIDList": list(order["ids"])})

    def h_async(self, req):
        q = req.query()
        if not q.get("regionID") or not q.get("jobID"):
            raise param_error("regionID and jobID are required")
        raise api_error("Ecs.Job.NotFound", "job %s not found" % q["jobID"], "任务不存在")

    def h_list(self, req):
        body = self.body_of(req)
        region = body.get("regionID")
        if not isinstance(region, str) or not region:
            raise param_error("regionID is required")
        page_no = body.get("pageNo", 1)
        page_size = body.get("pageSize", 10)
        if not isinstance(page_no, int) or page_no < 1:
            raise param_error("pageNo must be >= 1")
        if not isinstance(page_size, int) or not 1 <= page_size <= 50:
            raise param_error("pageSize must be 1..50")
        ids = body.get("instanceIDList")
        if ids is not None and not isinstance(ids, str):
            raise param_error("instanceIDList is a string of comma-separated ids, not %s" % type(ids).__name__)
        labels = body.get("labelList") or []
        if not isinstance(labels, list) or not all(isinstance(x, dict) and "labelKey" in x for x in labels):
            raise param_error("labelList needs [{labelKey, labelValue}]")
        with self.lock:
            sel = self.live(region)
            if ids:
                want = {i for i in ids.split(",") if i}
                sel = [r for r in sel if r["id"] in want]
            if body.get("instanceName"):
                sel = [r for r in sel if r["name"] == body["instanceName"]]
            if body.get("azName"):
                sel = [r for r in sel if r["az"] == body["azName"]]
            if body.get("state"):
                st = STATE_MAP.get(str(body["state"]).lower(), str(body["state"]).lower())
                sel = [r for r in sel if r["status"] == st]
            if body.get("keyword"):
                kw = body["keyword"]
                sel = [r for r in sel if kw in r["name"] or kw in r["extra"].get("displayName", "") or kw in r["id"]
                       or kw in r["ip"]]
            for lab in labels:
                sel = [r for r in sel if r["tags"].get(lab["labelKey"]) == lab.get("labelValue")]
            sel = sorted(sel, key=lambda r: (r["created_at"], r["name"]), reverse=True)
            total = len(sel)
            page = sel[(page_no - 1) * page_size: page_no * page_size]
            return ok({"currentCount": len(page), "totalCount": total,
                       "totalPage": (total + page_size - 1) // page_size,
                       "results": [self.render_server(r) for r in page]})

    def h_details(self, req):
        q = req.query()
        if not q.get("regionID") or not q.get("instanceID"):
            raise param_error("regionID and instanceID are required")
        with self.lock:
            rec = self.servers.get(q["instanceID"])
            if rec is None or rec["deleted"] or rec["region"] != q["regionID"]:
                raise api_error("Ecs.Instance.NotFound", "instance %s not found" % q["instanceID"], "云主机不存在")
            return ok(self.render_server(rec))

    def h_release(self, req, destroy):
        body = self.body_of(req)
        for f in ("clientToken", "regionID", "instanceID"):
            if not isinstance(body.get(f), str) or not body[f]:
                raise param_error("%s is required" % f)
        token, region, sid = body["clientToken"], body["regionID"], body["instanceID"]
        req.count = 1
        fingerprint = canonical_json(body)
        with self.lock:
            prior = self.replay(token, fingerprint)
            if prior is not None:
                return prior["status"], prior["body"], prior["headers"]
            rec = self.servers.get(sid)
            if rec is None or rec["region"] != region:
                raise api_error("Ecs.Instance.NotFound", "instance %s not found" % sid, "云主机不存在")
            kind = "destroy" if destroy else "unsubscribe"
            if rec["deleted"]:  # already gone: succeed again, with an order that is already done
                order = self.new_order(region, kind, [sid], 1)
                order["delay"] = 0
                self.tick()
            else:
                if destroy and rec["status"] != "unsubscribed":
                    raise api_error("Ecs.Instance.StatusNotSupport",
                                    "destroy-instance only destroys cycle (prepaid) instances that are already "
                                    "unsubscribed; release an on-demand instance with /v4/ecs/unsubscribe-instance",
                                    "仅支持销毁已退订的包周期云主机")
                if not destroy and not rec["extra"].get("releasing"):
                    rec["extra"]["releasing"] = True
                    if not rec["extra"].get("onDemand", True):
                        rec["status"] = "unsubscribing"
                order = self.new_order(region, kind, [sid], 1)
            status, out, headers = ok({"masterOrderID": order["id"], "masterOrderNO": order["no"], "regionID": region})
            self.remember(token, fingerprint, status, out, headers)
            return status, out, headers

    def h_label(self, req):
        body = self.body_of(req)
        region = body.get("regionID")
        ids = body.get("instanceIDList")
        op = body.get("operateType")
        labels = body.get("labelList")
        if not isinstance(region, str) or not region:
            raise param_error("regionID is required")
        if not isinstance(ids, str) or not ids:
            raise param_error("instanceIDList is a string of comma-separated ids")
        if op not in ("BIND", "UNBIND"):
            raise param_error("operateType must be BIND or UNBIND")
        if not isinstance(labels, list) or not labels or not all(
                isinstance(x, dict) and isinstance(x.get("labelKey"), str) and isinstance(x.get("labelValue"), str)
                for x in labels):
            raise param_error("labelList needs [{labelKey, labelValue}]")
        id_list = [i for i in ids.split(",") if i]
        req.count = len(id_list)
        with self.lock:
            recs = []
            for sid in id_list:
                rec = self.servers.get(sid)
                if rec is None or rec["deleted"] or rec["region"] != region:
                    raise api_error("Ecs.Instance.NotFound", "instance %s not found" % sid, "云主机不存在")
                recs.append(rec)
            for rec in recs:
                tags = dict(rec["tags"])
                for lab in labels:
                    if op == "BIND":
                        tags[lab["labelKey"]] = lab["labelValue"]
                    elif tags.get(lab["labelKey"]) == lab["labelValue"]:
                        del tags[lab["labelKey"]]
                if len(tags) > 10:
                    raise param_error("an instance can hold at most 10 labels")
                rec["tags"] = tags
                rec["updated_at"] = now()
            return ok({"result": "success"})


if __name__ == "__main__":
    sys.exit(fakebase.main(CtyunCloud, "Fake China Telecom Cloud (CTyun) ECS"))
