#!/usr/bin/env python3
"""Self-test of the two fake clouds, driven by the vendors' official SDK clients.

    bin=$(deploy/need-python.sh) && "$bin/python" deploy/cloud-fakes/selftest.py

Starts huawei_fake.py and ctyun_fake.py on port 0, then with huaweicloudsdkecs's EcsClient
(.with_endpoint) and ctyunsdk_ecs20220909's EcsClient (ClientConfig endpoint) creates (a batch of
2 on Huawei), polls, lists by tag/label, tags, deletes, checks that a wrong SK and a stale date
are refused, exercises each fault kind, and checks idempotent creates. Exits non-zero on any
failure; the last line is "N passed, M failed".
"""

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

# The CTyun SDK stamps Eop-date with local time, and the EOP gateway reads it as Beijing time
# (UTC+8): run this process in that zone, as a client in China would.
os.environ["TZ"] = "CST-8"
time.tzset()

from huaweicloudsdkcore.auth.credentials import BasicCredentials  # noqa: E402
from huaweicloudsdkcore.exceptions import exceptions as hw_exc  # noqa: E402
from huaweicloudsdkcore.sdk_request import SdkRequest  # noqa: E402
from huaweicloudsdkcore.signer.signer import Signer  # noqa: E402
from huaweicloudsdkecs.v2 import (  # noqa: E402
    BatchAddServerTag, BatchCreateServerTagsRequest, BatchCreateServerTagsRequestBody,
    CreatePostPaidServersRequest, CreatePostPaidServersRequestBody, DeleteServersRequest,
    DeleteServersRequestBody, EcsClient as HwEcsClient, ListServersDetailsRequest, PostPaidServer,
    PostPaidServerExtendParam, PostPaidServerNic, PostPaidServerRootVolume, PostPaidServerTag, ServerId,
    ShowJobRequest, ShowServerRequest)
from ctyun_python_sdk_core import ClientConfig, sign_util  # noqa: E402
from ctyun_python_sdk_core.credential import Credential  # noqa: E402
from ctyunsdk_ecs20220909.ecs_client import EcsClient as CtEcsClient  # noqa: E402
from ctyunsdk_ecs20220909 import models as ct  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ beside the sources
PASSED = 0
FAILED = []


def check(cond, what, detail=None):
    global PASSED
    if cond:
        PASSED += 1
        print("ok   %s" % what, flush=True)
    else:
        FAILED.append(what)
        print("FAIL %s%s" % (what, "" if detail is None else ": %s" % (detail,)), flush=True)
    return cond


class Fake:
    def __init__(self, script, ak, sk):
        self.log = tempfile.NamedTemporaryFile(prefix=os.path.basename(script) + ".", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, script), "--host", "127.0.0.1", "--port", "0",
                                      "--ak", ak, "--sk", sk],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening http://"):
            raise RuntimeError("%s did not start: %r (log %s)" % (script, line, self.log.name))
        self.url = line.split(" ", 1)[1]

    def control(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def fault(self, **spec):
        return self.control("POST", "/_fake/faults", spec)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def raw(method, url, headers, body=b""):
    """Sends a request as given; returns (status, parsed body or None)."""
    req = urllib.request.Request(url, data=body if body else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
            return r.status, (json.loads(data) if data else None)
    except urllib.error.HTTPError as e:
        data = e.read()
        return e.code, (json.loads(data) if data else None)


def wait_for(fn, what, timeout=10.0):
    end = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > end:
            return v
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Huawei

HW_AK, HW_SK = "HWFAKEAK0000000000001", "hwfakesk0000000000000000000000000000001"


def hw_client(fake, project, sk=HW_SK):
    cred = BasicCredentials(HW_AK, sk, project)
    return HwEcsClient.new_builder().with_credentials(cred).with_endpoint(fake.url).build()


def hw_create(client, name, count=1, token=None, tags=None, spot=False, flavor="s6.large.2"):
    server = PostPaidServer(
        name=name, image_ref="img-ubuntu-2204", flavor_ref=flavor, vpcid="vpc-1",
        nics=[PostPaidServerNic(subnet_id="subnet-1")], root_volume=PostPaidServerRootVolume(volumetype="SSD", size=40),
        count=count, user_data=base64.b64encode(b"#cloud-config\nruncmd: [echo hi]\n").decode(),
        server_tags=[PostPaidServerTag(key=k, value=v) for k, v in (tags or {}).items()],
        extendparam=PostPaidServerExtendParam(market_type="spot") if spot else None)
    return client.create_post_paid_servers(CreatePostPaidServersRequest(
        x_client_token=token, body=CreatePostPaidServersRequestBody(server=server)))


def hw_error(fn):
    try:
        fn()
    except hw_exc.ServiceResponseException as e:
        return e.status_code, e.error_code
    return None, None


def hw_wait_job(client, job_id):
    def done():
        j = client.show_job(ShowJobRequest(job_id=job_id))
        return j if j.status in ("SUCCESS", "FAIL") else None
    return wait_for(done, "job")


def hw_list(client, **kw):
    return client.list_servers_details(ListServersDetailsRequest(**kw))


def test_huawei(fake):
    print("== huawei (%s)" % fake.url)
    fake.control("POST", "/_fake/reset")
    fake.control("POST", "/_fake/config", {"job_delay_secs": 1.0})
    p1 = "0b5c3f5e8f80d2a12fc4c0112b5f8e3a"
    c = hw_client(fake, p1)

    # create a batch of 2, idempotently
    r = hw_create(c, "fy-b1", count=2, token="tok-1", tags={"fleetyard:fleet": "prod"}, spot=True)
    check(r.job_id and len(r.server_ids) == 2, "huawei create count=2 answers job_id and 2 serverIds", r)
    first = hw_list(c, tags="fleetyard:fleet=prod")
    check(first.count == 2 and {s.status for s in first.servers} == {"BUILD"}, "huawei servers are BUILD at first",
          [s.status for s in first.servers])
    r2 = hw_create(c, "fy-b1", count=2, token="tok-1", tags={"fleetyard:fleet": "prod"}, spot=True)
    check(r2.job_id == r.job_id and r2.server_ids == r.server_ids, "huawei same token+body replays the answer")
    check(len(fake.control("GET", "/_fake/servers")) == 2, "huawei replay created nothing")
    st, code = hw_error(lambda: hw_create(c, "fy-b1", count=1, token="tok-1"))
    check((st, code) == (400, "Ecs.0005"), "huawei same token, other body is refused", (st, code))
    job = hw_wait_job(c, r.job_id)
    check(job and job.status == "SUCCESS" and job.entities.sub_jobs_total == 2
          and all(s.status == "SUCCESS" for s in job.entities.sub_jobs), "huawei create job SUCCESS with 2 sub_jobs")
    lst = hw_list(c, tags="fleetyard:fleet=prod")
    names = sorted(s.name for s in lst.servers)
    check(names == ["fy-b1-0001", "fy-b1-0002"], "huawei batch names get -0001, -0002", names)
    check(all(s.status == "ACTIVE" and s.metadata.get("charging_mode") == "2" for s in lst.servers),
          "huawei servers ACTIVE and spot (charging_mode 2)")
    ctl = {s["id"]: s for s in fake.control("GET", "/_fake/servers")}
    s0 = ctl[r.server_ids[0]]
    check(s0["market"] == "spot" and s0["client_token"] == "tok-1" and s0["user_data"].startswith("#cloud-config")
          and s0["tags"] == {"fleetyard:fleet": "prod"} and s0["region"] == p1, "huawei control view", s0)
    # paging: offset is a page number
    p_1 = hw_list(c, limit=1, offset=1)
    p_2 = hw_list(c, limit=1, offset=2)
    check(p_1.count == 2 and len(p_1.servers) == 1 and p_1.servers[0].id != p_2.servers[0].id,
          "huawei offset is a 1-based page number")
    # server_id with an unknown id
    ghost = str(uuid.uuid4())
    byid = hw_list(c, server_id="%s,%s" % (r.server_ids[0], ghost))
    gs = [s for s in byid.servers if s.id == ghost]
    check(byid.count == 2 and gs and gs[0].name is None and gs[0].fault is not None,
          "huawei server_id filter answers an unknown id with fault and nulls")
    # tag one
    c.batch_create_server_tags(BatchCreateServerTagsRequest(server_id=r.server_ids[0], body=BatchCreateServerTagsRequestBody(
        action="create", tags=[BatchAddServerTag(key="fleetyard:lease", value="L-1")])))
    check(hw_list(c, tags="fleetyard:lease=L-1").count == 1, "huawei tag then list by tag")
    show = c.show_server(ShowServerRequest(server_id=r.server_ids[0]))
    check(show.server.id == r.server_ids[0] and "fleetyard:lease=L-1" in show.server.tags, "huawei show server")
    st, code = hw_error(lambda: c.show_server(ShowServerRequest(server_id=ghost)))
    check((st, code) == (404, "Ecs.0114"), "huawei unknown server is 404 Ecs.0114", (st, code))
    # another project is another region
    c2 = hw_client(fake, "p2")
    check(hw_list(c2).count == 0, "huawei another project sees nothing")

    # wrong SK, stale date
    st, code = hw_error(lambda: hw_list(hw_client(fake, p1, sk="wrong")))
    check((st, code) == (401, "APIGW.0301"), "huawei wrong SK is 401 APIGW.0301", (st, code))
    u = urlsplit(fake.url)
    path = "/v1/%s/cloudservers/detail" % p1
    stale = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 20 * 60))
    sreq = SdkRequest(method="GET", schema="http", host=u.netloc, resource_path=path, query_params=[],
                      header_params={"Content-Type": "application/json", "X-Sdk-Date": stale})
    Signer(BasicCredentials(HW_AK, HW_SK)).sign(sreq)
    st, body = raw("GET", fake.url + path, sreq.header_params)
    check(st == 401 and body["error_code"] == "APIGW.0301", "huawei X-Sdk-Date 20 min old is refused", (st, body))
    sreq = SdkRequest(method="GET", schema="http", host=u.netloc, resource_path=path,
                      query_params=[("limit", "5"), ("tags", "fleetyard:fleet=prod")],
                      header_params={"Content-Type": "application/json"})
    Signer(BasicCredentials(HW_AK, HW_SK)).sign(sreq)
    st, body = raw("GET", "http://%s%s" % (u.netloc, sreq.uri), sreq.header_params)
    check(st == 200 and body["count"] == 2, "huawei core Signer + urllib request accepted", (st, body))
    tampered = dict(sreq.header_params)
    st, body = raw("GET", "http://%s%s" % (u.netloc, sreq.uri.replace("limit=5", "limit=6")), tampered)
    check(st == 401, "huawei tampered query is refused", st)
    log = fake.control("GET", "/_fake/requests")
    bad = [e for e in log if e["signature_ok"] is False]
    check(len(bad) == 3, "huawei request log counts 3 bad signatures", len(bad))
    sdk_signed = {e["signed_headers"] for e in log if e["signature_ok"] and e["op"] == "list"}
    check("content-type;host;user-agent;x-project-id;x-sdk-date" in sdk_signed, "huawei SDK signs the expected headers",
          sdk_signed)

    # delete, idempotently
    d = c.delete_servers(DeleteServersRequest(body=DeleteServersRequestBody(
        servers=[ServerId(id=i) for i in r.server_ids], delete_publicip=True, delete_volume=True)))
    job = hw_wait_job(c, d.job_id)
    check(job and job.status == "SUCCESS", "huawei delete job SUCCESS")
    check(hw_list(c).count == 0, "huawei deleted servers are gone from the list")
    ctl = fake.control("GET", "/_fake/servers")
    check(len(ctl) == 2 and all(s["deleted"] for s in ctl), "huawei control keeps deleted servers with deleted:true")
    check(fake.control("GET", "/_fake/servers?include_deleted=false") == [], "huawei include_deleted=false hides them")
    d2 = c.delete_servers(DeleteServersRequest(body=DeleteServersRequestBody(servers=[ServerId(id=r.server_ids[0])])))
    check(hw_wait_job(c, d2.job_id).status == "SUCCESS", "huawei deleting again succeeds")

    # faults
    fake.control("POST", "/_fake/config", {"job_delay_secs": 0.1})
    fake.fault(op="create", kind="capacity")
    check(hw_error(lambda: hw_create(c, "fy-f1")) == (400, "Ecs.0319"), "huawei capacity fault: 400 Ecs.0319")
    fake.fault(op="create", kind="quota")
    check(hw_error(lambda: hw_create(c, "fy-f2")) == (400, "Ecs.0001"), "huawei quota fault: 400 Ecs.0001")
    fake.fault(op="list", kind="throttle")
    # The SDK's urllib3 Retry (status_forcelist [429], retry_times 0) turns a 429 into
    # ClientRequestException(429, "429") without the body; the body's code is in the fake's log.
    check(hw_error(lambda: hw_list(c))[0] == 429
          and fake.control("GET", "/_fake/requests")[-1]["error_code"] == "APIGW.0308",
          "huawei throttle fault: 429 APIGW.0308")
    fake.fault(op="any", kind="auth", region=p1)
    check(hw_error(lambda: hw_list(c)) == (401, "APIGW.0301"), "huawei auth fault: 401 APIGW.0301")
    fake.fault(op="create", kind="capacity", market="spot")
    check(hw_error(lambda: hw_create(c, "fy-f3", spot=True)) == (400, "Ecs.0319"), "huawei spot-only capacity fault hits spot")
    fake.fault(op="create", kind="capacity", flavor="c7.xlarge.2")
    ok1 = hw_create(c, "fy-f4", flavor="s6.large.2")
    check(ok1.job_id is not None, "huawei flavor-specific fault spares other flavors")
    check(hw_error(lambda: hw_create(c, "fy-f5", flavor="c7.xlarge.2")) == (400, "Ecs.0319"),
          "huawei flavor-specific fault hits its flavor")
    fake.fault(op="job", kind="server_error")
    check(hw_error(lambda: c.show_job(ShowJobRequest(job_id=ok1.job_id))) == (500, "Common.0001"),
          "huawei server_error fault: 500 Common.0001")
    fake.fault(op="list", kind="slow", delay_secs=1.0)
    t0 = time.time()
    hw_list(c)
    check(time.time() - t0 >= 1.0, "huawei slow fault delays the answer")
    fake.fault(op="create", kind="partial", succeed=1)
    pr = hw_create(c, "fy-p", count=3, token="tok-p", tags={"batch": "p"})
    pj = hw_wait_job(c, pr.job_id)
    subs = pj.entities.sub_jobs
    check(pj.status == "FAIL" and len(pr.server_ids) == 3 and [s.status for s in subs] == ["SUCCESS", "FAIL", "FAIL"]
          and subs[1].error_code == "Ecs.0319", "huawei partial fault: 1 sub_job SUCCESS, 2 FAIL (Ecs.0319)",
          [(s.status, s.error_code) for s in subs])
    check(hw_list(c, tags="batch=p").count == 1, "huawei partial fault: only the successful server exists")
    fake.fault(op="list", kind="throttle", times=-1)
    check(hw_error(lambda: hw_list(c))[0] == 429 and hw_error(lambda: hw_list(c))[0] == 429, "huawei times=-1 repeats")
    fake.control("DELETE", "/_fake/faults")
    check(hw_list(c).count >= 1, "huawei DELETE /_fake/faults clears them")

    # import existing servers, and a server the cloud lost
    imp = fake.control("POST", "/_fake/servers", {"region": p1, "servers": [
        {"name": "legacy-1", "flavor": "s6.small.1", "image": "img-old", "tags": {"owner": "ops"}},
        {"name": "legacy-2", "flavor": "s6.small.1", "image": "img-old", "tags": {"owner": "ops"}, "status": "SHUTOFF"}]})
    got = hw_list(c, tags="owner=ops")
    check(len(imp) == 2 and got.count == 2 and {s.status for s in got.servers} == {"ACTIVE", "SHUTOFF"},
          "huawei imported servers are listed")
    fake.control("POST", "/_fake/servers/%s/delete" % imp[0]["id"])
    check(hw_error(lambda: c.show_server(ShowServerRequest(server_id=imp[0]["id"]))) == (404, "Ecs.0114"),
          "huawei a server deleted out of band is gone")
    log = fake.control("GET", "/_fake/requests")
    check(any(e["fault"] == "partial" and e["count"] == 3 for e in log), "huawei request log records faults and counts")


# ---------------------------------------------------------------------------------------------
# CTyun

CT_AK, CT_SK = "ctfakeak00000000000000000000001", "ctfakesk00000000000000000000001"
REGION = "bb9fdb42056f11eda1610242ac110002"


def ct_client(fake, sk=CT_SK):
    return CtEcsClient(ClientConfig(endpoint=fake.url, access_key_id=CT_AK, access_key_secret=sk, verify_tls=False))


def quiet(fn):
    """The CTyun SDK prints every request and response; keep them out of the test output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def nic(cls):
    return [cls(isMaster=True, subnetID="subnet-4c4333pc67")]


def ct_create(client, name, token, labels=None, on_demand=True, flavor="s7.large.2", **extra):
    req = ct.V4EcsCreateInstanceRequest(
        clientToken=token, regionID=REGION, instanceName=name, displayName=name, azName="cn-huadong1-jsnj1A",
        flavorName=flavor, imageType=1, imageID="img-ubuntu", bootDiskType="SATA", bootDiskSize=40, vpcID="vpc-1",
        onDemand=on_demand, networkCardList=nic(ct.V4EcsCreateInstanceRequestNetworkCardList), extIP="0",
        secGroupList=["sg-1"], userData=base64.b64encode(b"#!/bin/bash\necho hi\n").decode(),
        labelList=[ct.V4EcsCreateInstanceRequestLabelList(labelKey=k, labelValue=v) for k, v in (labels or {}).items()],
        **extra)
    return quiet(lambda: client.v4_ecs_create_instance(req))


def ct_batch(client, name, token, count, labels=None):
    req = ct.V4EcsBatchCreateInstancesRequest(
        clientToken=token, regionID=REGION, azName="cn-huadong1-jsnj1A", instanceName=name, displayName=name,
        imageType=1, imageID="img-ubuntu", bootDiskType="SATA", bootDiskSize=40, vpcID="vpc-1", onDemand=True,
        networkCardList=nic(ct.V4EcsBatchCreateInstancesRequestNetworkCardList), extIP="0", flavorName="s7.large.2",
        orderCount=count,
        labelList=[ct.V4EcsBatchCreateInstancesRequestLabelList(labelKey=k, labelValue=v) for k, v in (labels or {}).items()])
    return quiet(lambda: client.v4_ecs_batch_create_instances(req))


def ct_order(client, oid):
    return quiet(lambda: client.v4_ecs_order_query_uuid(ct.V4EcsOrderQueryUuidRequest(masterOrderID=oid)))


def ct_wait_order(client, oid):
    return wait_for(lambda: (lambda o: o if o.returnObj and o.returnObj.orderStatus != "14" else None)(ct_order(client, oid)),
                    "order")


def ct_list(client, labels=None, **kw):
    lab = [ct.V4EcsListInstancesRequestLabelList(labelKey=k, labelValue=v) for k, v in (labels or {}).items()]
    return quiet(lambda: client.v4_ecs_list_instances(ct.V4EcsListInstancesRequest(regionID=REGION, labelList=lab or None,
                                                                                    **kw)))


def ct_release(client, iid, token):
    return quiet(lambda: client.v4_ecs_unsubscribe_instance(ct.V4EcsUnsubscribeInstanceRequest(
        clientToken=token, regionID=REGION, instanceID=iid)))


def test_ctyun(fake):
    print("== ctyun (%s)" % fake.url)
    fake.control("POST", "/_fake/reset")
    fake.control("POST", "/_fake/config", {"job_delay_secs": 1.0})
    c = ct_client(fake)

    r = ct_create(c, "fy-c1", "ct-tok-1", labels={"fleetyard-fleet": "prod"})
    check(r.statusCode == 800 and r.returnObj.masterOrderID, "ctyun create-instance answers masterOrderID", r)
    o = ct_order(c, r.returnObj.masterOrderID)
    check(o.returnObj.orderStatus == "14" and o.returnObj.instanceIDList == [], "ctyun order is 14 with no ids at first",
          o.returnObj)
    first = ct_list(c, labels={"fleetyard-fleet": "prod"})
    check(first.returnObj.totalCount == 1 and first.returnObj.results[0].instanceStatus == "creating",
          "ctyun instance is creating at first")
    r2 = ct_create(c, "fy-c1", "ct-tok-1", labels={"fleetyard-fleet": "prod"})
    check(r2.returnObj.masterOrderID == r.returnObj.masterOrderID, "ctyun same clientToken+body replays the answer")
    r3 = ct_create(c, "fy-c1-other", "ct-tok-1", labels={"fleetyard-fleet": "prod"})
    check(r3.statusCode == 900 and r3.errorCode == "Openapi.Parameter.Error", "ctyun same token, other body is refused",
          (r3.statusCode, r3.errorCode))
    done = ct_wait_order(c, r.returnObj.masterOrderID)
    check(done.returnObj.orderStatus == "3" and len(done.returnObj.instanceIDList) == 1, "ctyun order ends 3 with the id")
    iid = done.returnObj.instanceIDList[0]
    dup = ct_create(c, "fy-c1", "ct-tok-dup")
    check(dup.errorCode == "Ecs.Instance.NameDuplicated", "ctyun instanceName in use is refused", dup.errorCode)

    b = ct_batch(c, "fy-cb", "ct-tok-b", 2, labels={"fleetyard-fleet": "prod"})
    bo = ct_wait_order(c, b.returnObj.masterOrderID)
    check(bo.returnObj.orderStatus == "3" and len(bo.returnObj.instanceIDList) == 2, "ctyun batch-create orderCount=2")
    lst = ct_list(c, labels={"fleetyard-fleet": "prod"}, pageSize=50)
    names = sorted(x.instanceName for x in lst.returnObj.results)
    check(lst.returnObj.totalCount == 3 and names == ["fy-c1", "fy-cb-0001", "fy-cb-0002"]
          and all(x.instanceStatus == "running" for x in lst.returnObj.results), "ctyun list by label", names)
    check(len(fake.control("GET", "/_fake/servers")) == 3, "ctyun replay created nothing")
    one = ct_list(c, instanceIDList=iid)
    check(one.returnObj.totalCount == 1 and one.returnObj.results[0].instanceID == iid, "ctyun list by instanceIDList")
    big = ct_list(c, pageSize=51)
    check(big.errorCode == "Openapi.Parameter.Error", "ctyun pageSize > 50 refused")
    page = ct_list(c, pageSize=2, pageNo=2)
    check(page.returnObj.currentCount == 1 and page.returnObj.totalPage == 2, "ctyun paging")
    lab = quiet(lambda: c.v4_ecs_batch_operate_label(ct.V4EcsBatchOperateLabelRequest(
        regionID=REGION, instanceIDList=iid, operateType="BIND",
        labelList=[ct.V4EcsBatchOperateLabelRequestLabelList(labelKey="fleetyard-lease", labelValue="L-1")])))
    check(lab.statusCode == 800 and ct_list(c, labels={"fleetyard-lease": "L-1"}).returnObj.totalCount == 1,
          "ctyun batch-operate-label then list by label")
    det = quiet(lambda: c.v4_ecs_instance_details(ct.V4EcsInstanceDetailsRequest(regionID=REGION, instanceID=iid)))
    check(det.statusCode == 800 and det.returnObj.instanceID == iid, "ctyun instance-details")
    nf = quiet(lambda: c.v4_ecs_instance_details(ct.V4EcsInstanceDetailsRequest(regionID=REGION, instanceID="nope")))
    check(nf.errorCode == "Ecs.Instance.NotFound", "ctyun unknown instance is Ecs.Instance.NotFound")
    ctl = {s["id"]: s for s in fake.control("GET", "/_fake/servers")}
    check(ctl[iid]["tags"] == {"fleetyard-fleet": "prod", "fleetyard-lease": "L-1"}
          and ctl[iid]["user_data"].startswith("#!/bin/bash") and ctl[iid]["client_token"] == "ct-tok-1"
          and ctl[iid]["region"] == REGION, "ctyun control view", ctl[iid])
    trap = ct_create(c, "fy-monthly", "ct-tok-m", on_demand=False)
    check(trap.errorCode == "Openapi.Parameter.Error" and "cycle" in trap.message, "ctyun onDemand=false without cycle refused")
    destroy = quiet(lambda: c.v4_ecs_destroy_instance(ct.V4EcsDestroyInstanceRequest(
        clientToken="ct-tok-x", regionID=REGION, instanceID=iid)))
    check(destroy.errorCode == "Ecs.Instance.StatusNotSupport", "ctyun destroy-instance refuses an on-demand instance")

    # wrong SK, UTC date instead of Beijing time
    bad = quiet(lambda: ct_client(fake, sk="wrong").v4_ecs_list_instances(ct.V4EcsListInstancesRequest(regionID=REGION)))
    check(getattr(bad, "httpCode", None) == 401, "ctyun wrong SK is HTTP 401", getattr(bad, "httpCode", None))
    body = json.dumps({"regionID": REGION})
    rid = str(uuid.uuid4())
    for label, date, want in [("UTC", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), 401),
                              ("Beijing", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + 8 * 3600)), 200)]:
        auth = sign_util.sign(Credential(CT_AK, CT_SK), {}, body, rid, date)
        st, out = raw("POST", fake.url + "/v4/ecs/list-instances",
                      {"Content-Type": "application/json", "ctyun-eop-request-id": rid, "Eop-date": date,
                       "Eop-Authorization": auth}, body.encode())
        check(st == want, "ctyun Eop-date in %s time -> %d" % (label, want), (st, out))
    q = {"masterOrderID": r.returnObj.masterOrderID}
    date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + 8 * 3600))
    auth = sign_util.sign(Credential(CT_AK, CT_SK), q, None, rid, date)
    hdrs = {"ctyun-eop-request-id": rid, "Eop-date": date, "Eop-Authorization": auth}
    st, out = raw("GET", fake.url + "/v4/ecs/order/query-uuid?" + sign_util.get_sorted_str(q), hdrs)
    check(st == 200 and out["statusCode"] == 800, "ctyun core signer + urllib GET accepted", (st, out))
    st, out = raw("GET", fake.url + "/v4/ecs/order/query-uuid?masterOrderID=other", hdrs)
    check(st == 401, "ctyun tampered query refused", st)
    log = fake.control("GET", "/_fake/requests")
    check(len([e for e in log if e["signature_ok"] is False]) == 3, "ctyun request log counts 3 bad signatures")

    # release, idempotently
    rel = ct_release(c, iid, "ct-rel-1")
    check(rel.statusCode == 800 and rel.returnObj.masterOrderID, "ctyun unsubscribe-instance answers masterOrderID")
    rel2 = ct_release(c, iid, "ct-rel-1")
    check(rel2.returnObj.masterOrderID == rel.returnObj.masterOrderID, "ctyun release replays with the same token")
    ro = ct_wait_order(c, rel.returnObj.masterOrderID)
    check(ro.returnObj.orderStatus == "3", "ctyun release order ends 3")
    check(ct_list(c, instanceIDList=iid).returnObj.totalCount == 0, "ctyun released instance is gone")
    rel3 = ct_release(c, iid, "ct-rel-2")
    check(rel3.statusCode == 800 and ct_wait_order(c, rel3.returnObj.masterOrderID).returnObj.orderStatus == "3",
          "ctyun releasing again succeeds")
    check([s["deleted"] for s in fake.control("GET", "/_fake/servers") if s["id"] == iid] == [True],
          "ctyun control keeps the released instance with deleted:true")
    gone = ct_release(c, "never-was", "ct-rel-3")
    check(gone.errorCode == "Ecs.Instance.NotFound", "ctyun releasing an unknown id is Ecs.Instance.NotFound")

    # faults
    fake.control("POST", "/_fake/config", {"job_delay_secs": 0.1})
    fake.fault(op="create", kind="capacity")
    check(ct_create(c, "fy-f1", "ct-f1").errorCode == "Ecs.Flavor.SoldOut", "ctyun capacity fault: Ecs.Flavor.SoldOut")
    fake.fault(op="create", kind="quota")
    check(ct_create(c, "fy-f2", "ct-f2").errorCode == "Ecs.Quota.Insufficient", "ctyun quota fault: Ecs.Quota.Insufficient")
    check(ct_create(c, "fy-f2", "ct-f2").statusCode == 800, "ctyun a failed create's token is not remembered")
    fake.fault(op="list", kind="throttle")
    check(getattr(ct_list(c), "httpCode", None) == 429, "ctyun throttle fault: HTTP 429")
    fake.fault(op="any", kind="auth", region=REGION)
    check(getattr(ct_list(c), "httpCode", None) == 401, "ctyun auth fault: HTTP 401")
    fake.fault(op="job", kind="server_error")
    check(getattr(ct_order(c, r.returnObj.masterOrderID), "httpCode", None) == 500, "ctyun server_error fault: HTTP 500")
    fake.fault(op="create", kind="capacity", flavor="c7.xlarge.4")
    check(ct_create(c, "fy-f3", "ct-f3").statusCode == 800, "ctyun flavor-specific fault spares other flavors")
    check(ct_create(c, "fy-f4", "ct-f4", flavor="c7.xlarge.4").errorCode == "Ecs.Flavor.SoldOut",
          "ctyun flavor-specific fault hits its flavor")
    fake.fault(op="list", kind="slow", delay_secs=1.0)
    t0 = time.time()
    ct_list(c)
    check(time.time() - t0 >= 1.0, "ctyun slow fault delays the answer")
    fake.fault(op="create", kind="partial", succeed=1)
    pb = ct_batch(c, "fy-p", "ct-p", 3, labels={"batch": "p"})
    po = ct_wait_order(c, pb.returnObj.masterOrderID)
    check(po.returnObj.orderStatus == "3" and len(po.returnObj.instanceIDList) == 1,
          "ctyun partial fault: the order ends 3 with 1 of 3 ids", po.returnObj)
    fake.fault(op="create", kind="partial", succeed=0)
    po0 = ct_wait_order(c, ct_create(c, "fy-p0", "ct-p0").returnObj.masterOrderID)
    check(po0.returnObj.orderStatus == "5" and po0.returnObj.instanceIDList == [], "ctyun partial succeed=0: order 5")
    fake.control("DELETE", "/_fake/faults")

    imp = fake.control("POST", "/_fake/servers", {"region": REGION, "servers": [
        {"name": "legacy-1", "flavor": "s7.small.1", "image": "img-old", "tags": {"owner": "ops"}}]})
    got = ct_list(c, labels={"owner": "ops"})
    check(got.returnObj.totalCount == 1 and got.returnObj.results[0].instanceID == imp[0]["id"],
          "ctyun imported instance is listed")
    fake.control("POST", "/_fake/servers/%s/delete" % imp[0]["id"])
    check(ct_list(c, labels={"owner": "ops"}).returnObj.totalCount == 0, "ctyun an instance deleted out of band is gone")


def test_vectors():
    """The fakes' signature checks accept the committed vectors (dates aside) and refuse them
    with one byte changed: the fakes and the vectors the Rust tests use agree."""
    print("== vectors")
    import email.message
    import fakebase
    import huawei_fake
    import ctyun_fake
    testdata = os.path.join(os.path.dirname(os.path.dirname(HERE)), "api", "src", "cloud", "testdata")
    saved = fakebase.SKEW_SECS
    fakebase.SKEW_SECS = float("inf")
    try:
        def request(method, url, headers, body):
            u = urlsplit(url)
            msg = email.message.Message()
            for k, v in headers.items():
                msg[k] = v
            return fakebase.Request(method, u.path + ("?" + u.query if u.query else ""), msg, body.encode("utf-8"))

        def accepted(cloud, req):
            try:
                cloud.verify_signature(req)
                return True
            except fakebase.ApiError:
                return False

        with open(os.path.join(testdata, "huawei_vectors.json"), encoding="utf-8") as f:
            hv = json.load(f)
        for v in hv:
            cloud = huawei_fake.HuaweiCloud(v["ak"], v["sk"])
            hdrs = dict(v["headers"], Authorization=v["authorization"])
            ok1 = accepted(cloud, request(v["method"], v["url"], hdrs, v["body"]))
            bad = dict(hdrs, Authorization=v["authorization"][:-1] + ("0" if v["authorization"][-1] != "0" else "1"))
            ok2 = not accepted(cloud, request(v["method"], v["url"], bad, v["body"]))
            check(ok1 and ok2, "huawei fake agrees with vector %s" % v["name"], (ok1, ok2))
        with open(os.path.join(testdata, "ctyun_vectors.json"), encoding="utf-8") as f:
            cv = json.load(f)
        for v in cv:
            cloud = ctyun_fake.CtyunCloud(v["ak"], v["sk"])
            hdrs = {"ctyun-eop-request-id": v["request_id"], "Eop-date": v["eop_date"],
                    "Eop-Authorization": v["authorization"]}
            ok1 = accepted(cloud, request(v["method"], v["url"], hdrs, v["body"]))
            ok2 = not accepted(cloud, request(v["method"], v["url"], hdrs, v["body"] + " "))
            check(ok1 and ok2, "ctyun fake agrees with vector %s" % v["name"], (ok1, ok2))
    finally:
        fakebase.SKEW_SECS = saved


def main():
    try:
        test_vectors()
    except Exception as e:
        import traceback
        traceback.print_exc()
        check(False, "vector self-test ran to the end", repr(e))
    fakes = []
    try:
        hw = Fake("huawei_fake.py", HW_AK, HW_SK)
        fakes.append(hw)
        ctf = Fake("ctyun_fake.py", CT_AK, CT_SK)
        fakes.append(ctf)
        for name, fn, fake in (("huawei", test_huawei, hw), ("ctyun", test_ctyun, ctf)):
            try:
                fn(fake)
            except Exception as e:  # a crash is a failure, the other vendor still runs
                import traceback
                traceback.print_exc()
                check(False, "%s self-test ran to the end" % name, repr(e))
    finally:
        for f in fakes:
            f.stop()
    for f in fakes:
        if FAILED:
            print("-- %s log: %s" % (os.path.basename(f.proc.args[1]), f.log.name))
        else:
            os.unlink(f.log.name)
    print("%d passed, %d failed" % (PASSED, len(FAILED)))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
