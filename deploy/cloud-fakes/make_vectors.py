#!/usr/bin/env python3
"""Signature test vectors produced by the vendors' official SDK signers.

Writes api/src/cloud/testdata/huawei_vectors.json and ctyun_vectors.json (run from the
venv: bin=$(deploy/need-python.sh) && "$bin/python" deploy/cloud-fakes/make_vectors.py).

Huawei (huaweicloudsdkcore 3.1.219): every value comes from
`huaweicloudsdkcore.signer.signer.Signer.sign(SdkRequest)`. The canonical request is taken
from inside that same call (a subclass records the argument of `_process_string_to_sign`);
`url` is the signed request's `SdkRequest.url` (resource path + `process_request_uri`'s query),
which is what the SDK's HTTP client sends.
  * Query: (key, value) pairs sorted as *decoded* Python strings (code point order, key first,
    then value; NOT the order of the encoded strings: "a/b" sorts after "a.b" although
    "%2F" sorts before "."), then each encoded with `quote(s, safe='~')`: only A-Z a-z 0-9
    - _ . ~ stay; space is %20 (never +), + is %2B, = %3D, / %2F, * %2A, UTF-8 bytes as
    uppercase %XX. `k=` for an empty value; repeated keys are kept. The URL's query is this
    same string.
  * Path: percent-decoded, split on '/', each segment `quote(seg, safe='~')`, a '/' appended.
  * Signed headers: every header present at signing whose name has no '_' (so Host and
    X-Sdk-Date, which sign() adds when missing), names lower-cased and sorted, values trimmed.
  * Body: hex SHA-256 of the exact bytes (empty body: the empty-string hash).

CTyun (ctyun-python-sdk-core 0.0.1, import ctyun_python_sdk_core): `authorization` is
`ctyun_python_sdk_core.sign_util.sign(credential, params, body, request_id, eop_date)`, as
CtyunClient.request calls it; `string_to_sign` is the data of that call's last HMAC (recorded by
wrapping `sign_util._hmac_sha256`); `query` is `sign_util.get_sorted_str(params)`; `url` is the
endpoint + path + '?' + `sign_util.params_to_query_string(sign_util.get_sorted_params(params))`,
the query string CtyunClient hands to requests.
  * Query in the string to sign: params is a dict (so no repeated keys), sorted by key; the
    key is NOT encoded; the value is `quote(str(v), safe='')`: only A-Z a-z 0-9 - _ . ~ stay,
    space %20, + %2B, = %3D, / %2F, * %2A, UTF-8 as %XX, '' gives `k=`.
  * Query as sent differs: `quote("k=v", safe='=&')` leaves '=' and '&' raw in values (so a
    value with '&' cannot be sent; none is used here). For keys and values free of '=' and '&'
    the two strings are identical.
  * Body: hex SHA-256 of the exact body string's UTF-8 bytes ('' when there is none); the SDK
    serialises a dict with json.dumps (', ' and ': ' separators), and requests sends the same.
  * Neither the method nor the path is signed.
"""

import base64
import hashlib
import json
import os
import sys
from urllib.parse import quote, urlsplit

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from ctyun_python_sdk_core import sign_util
from ctyun_python_sdk_core.credential import Credential

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "api", "src", "cloud", "testdata")


# ---------------------------------------------------------------------------------------------
# Huawei


class RecordingSigner(Signer):
    """The official Signer, remembering the canonical request sign() builds."""

    canonical_request = None

    def _process_string_to_sign(self, canonical_request, time):
        self.canonical_request = canonical_request
        return super()._process_string_to_sign(canonical_request, time)


def huawei_sign(ak, sk, method, url, query, headers, body):
    """url: scheme://host[:port]/path (the path as the SDK client builds it, already percent
    encoded); query: list of (key, value) pairs; body: bytes or None."""
    u = urlsplit(url)
    req = SdkRequest(method=method, schema=u.scheme, host=u.netloc, resource_path=u.path,
                     query_params=list(query), header_params=dict(headers), body=body)
    signer = RecordingSigner(BasicCredentials(ak, sk))
    signed = signer.sign(req)
    hdrs = {k: v for k, v in signed.header_params.items() if k != "Authorization"}
    auth = signed.header_params["Authorization"]
    signed_headers = auth.split("SignedHeaders=")[1].split(",")[0]
    return {
        "method": method,
        "url": signed.url,
        "headers": hdrs,
        "body": (body or b"").decode("utf-8"),
        "ak": ak,
        "sk": sk,
        "canonical_request": signer.canonical_request,
        "signed_headers": signed_headers,
        "authorization": auth,
    }


HW_AK = "HPUAFAKEACCESSKEY0001"
HW_SK = "sEcReTkEyForTheFakeHuaweiCloud0000000001"
HW_DATE = "20250601T080910Z"
HW_EP = "https://ecs.cn-north-4.myhuaweicloud.com"
PROJECT = "0b5c3f5e8f80d2a12fc4c0112b5f8e3a"
JSON = "application/json"
# The headers the official EcsClient has when it signs (User-Agent and X-Project-Id included).
ECS_CLIENT_HEADERS = {"User-Agent": "huaweicloud-usdk-python/3.0", "X-Project-Id": PROJECT}


def huawei_vectors():
    out = []

    def add(name, method, url, query=(), headers=None, body=None, ak=HW_AK, sk=HW_SK):
        v = huawei_sign(ak, sk, method, url, query, headers or {}, body)
        out.append({"name": name, **v})
        return v

    # 1. The signing guide's published example; the SDK must reproduce it.
    doc = add("huawei-doc-example", "GET",
              "https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
              [("limit", "2"), ("marker", "13551d6b-755d-4757-b956-536f674975c0")],
              {"Content-Type": JSON, "X-Sdk-Date": "20191115T033655Z"},
              ak="QTWAOYTTINDUT2QVKYUC", sk="MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc")
    assert doc["authorization"] == (
        "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, SignedHeaders=content-type;host;x-sdk-date, "
        "Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"), doc["authorization"]
    assert hashlib.sha256(doc["canonical_request"].encode()).hexdigest() == \
        "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"

    base = {"Content-Type": JSON, "X-Sdk-Date": HW_DATE, **ECS_CLIENT_HEADERS}
    add("get-no-query", "GET", f"{HW_EP}/v1/{PROJECT}/cloudservers/detail", [], base)
    add("get-no-query-no-content-type", "GET", f"{HW_EP}/v1/{PROJECT}/jobs/ff80808288d41e1b018990260955686a",
        [], {"X-Sdk-Date": HW_DATE})
    add("list-by-tag-and-paging", "GET", f"{HW_EP}/v1/{PROJECT}/cloudservers/detail",
        [("tags", "fleetyard:fleet=prod-1"), ("limit", "1000"), ("offset", "1"), ("name", "fy-")], base)
    # Repeated keys whose decoded order differs from their encoded order: decoded "a.b" <
    # "a/b" (. is 0x2E, / 0x2F) while encoded "a%2Fb" < "a.b"; decoded "z" < "é" while encoded
    # "%C3%A9" < "z". The SDK sorts decoded strings.
    add("repeated-keys-sort-decoded", "GET", f"{HW_EP}/v1/{PROJECT}/cloudservers/detail",
        [("tag", "z"), ("tag", "a/b"), ("tag", "é"), ("tag", "a.b"), ("tag", "a-b"), ("b", "1"), ("a", "2")], base)
    add("query-special-characters", "GET", f"{HW_EP}/v1/{PROJECT}/cloudservers/detail",
        [("space", "a b"), ("tilde", "a~b"), ("plus", "a+b"), ("equals", "k=v"), ("slash", "x/y"),
         ("star", "a*b"), ("utf8", "云主机-名字"), ("empty", ""), ("amp", "a&b"), ("pct", "100%"),
         ("colon", "fleetyard:fleet"), ("comma", "id1,id2")], base)
    body = json.dumps({
        "server": {
            "name": "fy-batch-7", "imageRef": "1189efbf-d48b-46ad-a823-94b942e2a000",
            "flavorRef": "s6.small.1", "vpcid": "0dae26c9-9a70-4392-93f3-87d53115d171",
            "nics": [{"subnet_id": "157ee789-03ea-45b1-a698-76c92660dd4f"}],
            "root_volume": {"volumetype": "SSD", "size": 40}, "count": 2,
            "user_data": base64.b64encode(b"#cloud-config\nruncmd: [\"echo hi\"]\n").decode(),
            "server_tags": [{"key": "fleetyard:fleet", "value": "prod-1"}],
            "extendparam": {"chargingMode": 0, "marketType": "spot"},
            "availability_zone": "cn-north-4a",
        }
    }, separators=(",", ":")).encode()
    add("post-create-json-body", "POST", f"{HW_EP}/v1/{PROJECT}/cloudservers", [],
        {**base, "X-Client-Token": "0f1e2d3c4b5a69788796a5b4c3d2e1f0"}, body)
    add("post-json-body-utf8-pretty", "POST", f"{HW_EP}/v1/{PROJECT}/cloudservers/delete", [], base,
        json.dumps({"servers": [{"id": "616fb98f-46ca-475e-917e-2563e5a86666"}], "delete_publicip": True,
                    "delete_volume": True, "note": "删除 ✓"}, ensure_ascii=False, indent=2).encode())
    # A path segment needing encoding: the client sends it percent-encoded (the SDK's client
    # substitutes path parameters with quote(v, safe='')); the canonical URI re-encodes the
    # decoded segment with safe='~'.
    seg = quote("名字 (1)~x+y*z", safe="")
    add("path-needing-encoding", "GET", f"{HW_EP}/v1/{PROJECT}/cloudservers/{seg}", [], base)
    add("non-default-port", "POST", f"http://127.0.0.1:8443/v1/{PROJECT}/cloudservers/9f1c0e8a-1111-4d6b-8a3e-222233334444/tags/action",
        [], {"Content-Type": JSON, "X-Sdk-Date": HW_DATE},
        b'{"action":"create","tags":[{"key":"fleetyard:lease","value":"L-42"}]}')
    add("default-port-explicit-host", "GET", f"{HW_EP}/v1/{PROJECT}/cloudservers/detail",
        [("server_id", "a1,b2")], {**base, "Host": "ecs.cn-north-4.myhuaweicloud.com"})
    # Header names with '_' are not signed; values are trimmed.
    add("underscore-header-and-trimmed-value", "GET", f"{HW_EP}/v1/{PROJECT}/cloudservers/detail",
        [("limit", "25")], {"Content-Type": JSON, "X-Sdk-Date": HW_DATE, "X_Custom_Thing": "skipped",
                            "X-Client-Trace": "  padded value  "})
    # (Not included: a non-JSON/BSON Content-Type makes the SDK add the signed header
    # X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD and use that literal instead of the body hash.
    # ECS takes JSON only.)
    return out


# ---------------------------------------------------------------------------------------------
# CTyun


class HmacRecorder:
    """Wraps sign_util._hmac_sha256 to record the data of each HMAC computed."""

    def __enter__(self):
        self.calls = []
        self.orig = sign_util._hmac_sha256

        def rec(key, data):
            self.calls.append(data)
            return self.orig(key, data)
        sign_util._hmac_sha256 = rec
        return self

    def __exit__(self, *exc):
        sign_util._hmac_sha256 = self.orig


CT_AK = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
CT_SK = "0f9e8d7c6b5a49382716a5b4c3d2e1f0"
CT_EP = "https://ctecs-global.ctapi.ctyun.cn"
REGION = "bb9fdb42056f11eda1610242ac110002"
EOP_DATE = "20250601T080910Z"


def ctyun_sign(name, method, path, params, body, request_id, eop_date=EOP_DATE, ak=CT_AK, sk=CT_SK):
    params = {k: v for k, v in (params or {}).items() if v is not None}  # as CtyunClient.request
    with HmacRecorder() as rec:
        auth = sign_util.sign(credential=Credential(ak, sk), params=params, body=body,
                              request_id=request_id, eop_date=eop_date)
    string_to_sign = rec.calls[-1]
    sent_query = sign_util.params_to_query_string(sign_util.get_sorted_params(params))
    url = CT_EP + path + ("?" + sent_query if sent_query else "")
    return {
        "name": name, "method": method, "url": url, "query": sign_util.get_sorted_str(params),
        "body": body or "", "ak": ak, "sk": sk, "request_id": request_id, "eop_date": eop_date,
        "string_to_sign": string_to_sign, "authorization": auth,
    }


def ctyun_vectors():
    out = []
    rid = "5b8f6a3e-3c1d-11f0-9a5e-0242ac120002"
    out.append(ctyun_sign("get-no-query", "GET", "/v4/region/list-regions", {}, None, rid))
    out.append(ctyun_sign("order-query-uuid", "GET", "/v4/ecs/order/query-uuid",
                          {"masterOrderID": "20250601080910123456789"}, None, rid))
    out.append(ctyun_sign("query-async-result", "GET", "/v4/ecs/query-async-result",
                          {"regionID": REGION, "jobID": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"}, None, rid))
    out.append(ctyun_sign("query-special-characters", "GET", "/v4/ecs/list-anything",
                          {"space": "a b", "tilde": "a~b", "plus": "a+b", "equals": "k=v", "slash": "x/y",
                           "star": "a*b", "utf8": "云主机-名字", "empty": "", "pct": "100%",
                           "colon": "fleetyard:fleet", "comma": "id1,id2", "Upper": "Z"}, None, rid))
    create = json.dumps({
        "clientToken": "fy-7-1-ctyun-cn-east-s7.large.2", "regionID": REGION,
        "azName": "cn-huadong1-jsnj1A-public-ctcloud", "instanceName": "fy-7-0001",
        "displayName": "fy-7-0001", "flavorID": "b6779240-5649-803b-4a4c-8fc59d310ecf", "imageType": 1,
        "imageID": "939c131f-a986-420f-a3b2-57feb9995e47", "bootDiskType": "SATA", "bootDiskSize": 40,
        "vpcID": "vpc-chz0ilszsp", "onDemand": True,
        "networkCardList": [{"isMaster": True, "subnetID": "subnet-4c4333pc67"}], "extIP": "0",
        "secGroupList": ["sg-bqv0t629h6"], "userData": base64.b64encode(b"#!/bin/bash\necho hi\n").decode(),
        "labelList": [{"labelKey": "fleetyard-fleet", "labelValue": "prod-1"}],
    }, separators=(",", ":"))
    out.append(ctyun_sign("post-create-json-body", "POST", "/v4/ecs/create-instance", {}, create, rid))
    # The SDK's own serialisation: json.dumps with ', ' / ': ', as requests sends `json=`.
    out.append(ctyun_sign("post-list-sdk-json", "POST", "/v4/ecs/list-instances", {},
                          json.dumps({"regionID": REGION, "pageNo": 1, "pageSize": 50,
                                      "labelList": [{"labelKey": "fleetyard-fleet", "labelValue": "prod-1"}]}), rid))
    out.append(ctyun_sign("post-utf8-body-and-query", "POST", "/v4/ecs/batch-operate-label",
                          {"regionID": REGION},
                          json.dumps({"instanceIDList": "i-1,i-2", "operateType": "BIND",
                                      "labelList": [{"labelKey": "说明", "labelValue": "值 ✓"}]},
                                     ensure_ascii=False), rid))
    out.append(ctyun_sign("other-request-id-and-date", "POST", "/v4/ecs/unsubscribe-instance", {},
                          '{"clientToken":"t-1","regionID":"%s","instanceID":"i-1"}' % REGION,
                          "c0ffee00-0000-4000-8000-000000000001", eop_date="20241231T235959Z"))
    out.append(ctyun_sign("other-keys", "GET", "/v4/ecs/order/query-uuid", {"masterOrderID": "x"}, None, rid,
                          ak="AK0000000000000000000000000000ZZ", sk="SK-with-dashes_and.dots~"))
    out.append(ctyun_sign("empty-value-only", "GET", "/v4/ecs/something", {"a": ""}, None, rid))
    return out


def write(name, vectors):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(vectors, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {os.path.relpath(path, REPO)}", file=sys.stderr)


def main():
    write("huawei_vectors.json", huawei_vectors())
    write("ctyun_vectors.json", ctyun_vectors())


if __name__ == "__main__":
    main()
