//! The web pages (issue #14) over plain HTTP, as a browser without JavaScript uses them:
//! signing in with a cookie, both languages, the registration form's field errors, the CSRF
//! token, a donor kept to its own pages, ops approving through a page, the CSV export and
//! signing out. (The real-browser journeys and axe checks run in `tests/browser/`.)

use std::collections::HashMap;

use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{PASSWORD, id_of, machine, pool_machine, usage_right_form};
use reqwest::header::{ACCEPT_LANGUAGE, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;

/// A cookie-keeping client that does not follow redirects, so each answer can be checked.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
    lang: &'static str,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Page {
    /// The value of the first hidden `_csrf` field.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"_csrf\" value=\"").expect("a form with a CSRF token");
        let rest = &self.body[at + "name=\"_csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Browser {
    fn new(app: &TestApp, lang: &'static str) -> Browser {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { client, base: app.base_url.clone(), cookies: HashMap::new(), lang }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let response = request.header(COOKIE, cookie).header(ACCEPT_LANGUAGE, self.lang).send().await.unwrap();
        for set in response.headers().get_all(SET_COOKIE) {
            let text = set.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status().as_u16();
        let location = response.headers().get(LOCATION).map(|l| l.to_str().unwrap().to_owned());
        Page { status, location, body: response.text().await.unwrap() }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body = serde_html_form::to_string(form).unwrap();
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    async fn sign_in(&mut self, email: &str) -> Page {
        let form = self.get("/ui/login").await;
        assert_eq!(form.status, 200);
        let csrf = form.csrf();
        let signed_in = self
            .post("/ui/login", &[("_csrf", &csrf), ("next", "/ui/"), ("email", email), ("password", PASSWORD)])
            .await;
        assert_eq!(signed_in.status, 303, "signing in as {email}: {}", signed_in.body);
        signed_in
    }
}

async fn ops_account(app: &TestApp, admin: &str) -> String {
    let email = format!("ops-pages-{}@fleetyard.test", uuid::Uuid::new_v4().simple());
    app.post(
        "/api/v1/users",
        admin,
        json!({ "email": email, "display_name": "Ops", "password": PASSWORD, "role": "admin" }),
    )
    .await
    .expect(201);
    email
}

/// The registration form as a donor fills it in: one riscv64 board donated for its Saturday
/// evenings.
fn registration<'a>(csrf: &'a str, site: &'a str, agreement: &'a str, hostname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("_csrf", csrf),
        ("rows", "1"),
        ("windows", "1"),
        ("model", "usage_right"),
        ("site_id", site),
        ("agreement_ref", agreement),
        ("starts_on", "2026-12-01"),
        ("machines[0].hostname", hostname),
        ("machines[0].arch", "riscv64"),
        ("machines[0].cpu_model", "SG2042"),
        ("machines[0].cpu_cores", "64"),
        ("machines[0].memory_mib", "131072"),
        ("machines[0].disk_gib", "1024"),
        ("usage_policy.purposes", "ci"),
        ("usage_policy.max_concurrent_leases", "2"),
        ("usage_policy.max_lease_minutes", "240"),
        ("usage_policy.windows[0].days", "sat"),
        ("usage_policy.windows[0].start", "20:00"),
        ("usage_policy.windows[0].end", "24:00"),
    ]
}

/// Changes one field of a form.
fn set<'a>(fields: &mut [(&'a str, &'a str)], name: &str, value: &'a str) {
    fields.iter_mut().find(|(k, _)| *k == name).expect("a field of the form").1 = value;
}

fn donor_email(name: &str) -> String {
    let slug: String = name.to_lowercase().chars().filter(char::is_ascii_alphanumeric).collect();
    format!("staff@{slug}.example")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_sign_in_and_see_the_dashboard_in_their_browser_s_language() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let email = ops_account(&app, &w.admin).await;

    let mut anonymous = Browser::new(&app, "en-US");
    let refused = anonymous.get("/ui/dashboard").await;
    assert_eq!(refused.status, 303);
    assert_eq!(refused.location.as_deref(), Some("/ui/login?next=%2Fui%2Fdashboard"));

    let mut en = Browser::new(&app, "en-US,en;q=0.9");
    assert_eq!(en.sign_in(&email).await.location.as_deref(), Some("/ui/"));
    assert!(en.cookies.contains_key("fy_session"));
    assert_eq!(en.get("/ui/").await.location.as_deref(), Some("/ui/dashboard"));
    let dashboard = en.get("/ui/dashboard").await;
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.body.contains("<html lang=\"en\">") && dashboard.body.contains("The fleet at a glance"));

    let mut zh = Browser::new(&app, "zh-CN,zh;q=0.9");
    zh.sign_in(&email).await;
    let dashboard = zh.get("/ui/dashboard").await;
    assert!(
        dashboard.body.contains("<html lang=\"zh-CN\">") && dashboard.body.contains("机群总览"),
        "{}",
        dashboard.body
    );

    // Switching the language sticks, whatever the browser asks for.
    let switched = en.post("/ui/lang", &[("lang", "zh-CN"), ("next", "/ui/machines")]).await;
    assert_eq!(switched.location.as_deref(), Some("/ui/machines"));
    assert!(en.get("/ui/machines").await.body.contains("机器"));

    // Every page ops open answers.
    for path in ["/ui/machines", "/ui/donations", "/ui/queue", "/ui/audit", "/ui/donations/new", "/ui/assets/app.css"] {
        assert_eq!(zh.get(path).await.status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_registers_through_the_form_sees_its_mistake_next_to_the_field_and_fixes_it() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let mut donor = Browser::new(&app, "en-US");
    donor.sign_in(&donor_email("Plumtree Semiconductor")).await;
    assert_eq!(donor.get("/ui/").await.location.as_deref(), Some("/ui/donations"));
    let form = donor.get("/ui/donations/new").await;
    let csrf = form.csrf();
    let mut fields = registration(&csrf, &w.a.site_id, "PLUM-UI-1", "rv-ui-1");
    set(&mut fields, "machines[0].cpu_cores", "sixty-four");
    let mistaken = donor.post("/ui/donations/new", &fields).await;
    assert_eq!(mistaken.status, 422);
    assert!(
        mistaken.body.contains("id=\"m0-cpu_cores-error\""),
        "the error sits next to its field:\n{}",
        mistaken.body
    );
    assert!(mistaken.body.contains("value=\"rv-ui-1\""), "what was typed is kept");
    let before = app.get(&format!("/api/v1/donations?donor_id={}", w.a.id), &w.a.token).await;
    assert_eq!(before.body["items"].as_array().unwrap().len(), 0, "nothing was written");

    set(&mut fields, "machines[0].cpu_cores", "64");
    let registered = donor.post("/ui/donations/new", &fields).await;
    assert_eq!(registered.status, 303, "{}", registered.body);
    let page = registered.location.unwrap();
    let shown = donor.get(&page).await;
    assert!(shown.body.contains("PLUM-UI-1") && shown.body.contains("rv-ui-1"));

    // A link from another site opens the page; a form posted from another site is refused,
    // token or not.
    let from_elsewhere = donor.client.get(format!("{}{page}", donor.base)).header("sec-fetch-site", "cross-site");
    assert_eq!(donor.send(from_elsewhere).await.status, 200);
    let token = donor.get(&page).await.csrf();
    let posted = donor
        .client
        .post(format!("{}{page}/act", donor.base))
        .header("sec-fetch-site", "cross-site")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_html_form::to_string([("_csrf", token.as_str()), ("action", "withdraw")]).unwrap());
    assert_eq!(donor.send(posted).await.status, 403);

    // Without its token the same form is refused, and nothing more is written.
    let without: Vec<_> = fields
        .iter()
        .filter(|(k, _)| *k != "_csrf")
        .map(|(k, v)| (*k, if *k == "agreement_ref" { "PLUM-UI-2" } else { *v }))
        .collect();
    assert_eq!(donor.post("/ui/donations/new", &without).await.status, 403);
    let after = app.get(&format!("/api/v1/donations?donor_id={}", w.a.id), &w.a.token).await;
    assert_eq!(after.body["items"].as_array().unwrap().len(), 1);

    // Another donor's staff cannot open it, nor act on it.
    let mut other = Browser::new(&app, "en-US");
    other.sign_in(&donor_email("Westlake Open Hardware Lab")).await;
    assert_eq!(other.get(&page).await.status, 404);
    let token = other.get("/ui/donations").await.csrf();
    assert_eq!(other.post(&format!("{page}/act"), &[("_csrf", &token), ("action", "withdraw")]).await.status, 404);
    assert!(!other.get("/ui/donations").await.body.contains("PLUM-UI-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_the_api_words_are_shown_in_the_viewer_s_language() {
    let app = TestApp::spawn().await;
    let w = app.world().await;

    // The API sends each field's problem as a code with its arguments, and in English.
    let mut bad = machine("riscv64", "RV-CODE-1");
    bad["cpu_cores"] = json!(0);
    let refused = app
        .post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, "PLUM-CODE-1", vec![bad]))
        .await
        .expect(422);
    let problem = &refused.body["details"]["errors"][0];
    assert_eq!(problem["field"], "machines[0].cpu_cores");
    assert_eq!(problem["code"], "between");
    assert_eq!(problem["args"], json!({ "min": 1, "max": 4096 }));
    assert_eq!(problem["problem"], "must be between 1 and 4096");

    // A donor whose browser asks for Chinese reads the same problems in Chinese, next to
    // their fields: a word where a number belongs, a window that ends where it starts.
    let mut donor = Browser::new(&app, "zh-CN,zh;q=0.9");
    donor.sign_in(&donor_email("Plumtree Semiconductor")).await;
    let csrf = donor.get("/ui/donations/new").await.csrf();
    let mut fields = registration(&csrf, &w.a.site_id, "PLUM-ZH-1", "rv-zh-1");
    set(&mut fields, "machines[0].cpu_cores", "六十四");
    let mistaken = donor.post("/ui/donations/new", &fields).await;
    assert_eq!(mistaken.status, 422);
    assert!(mistaken.body.contains("必须是整数"), "{}", mistaken.body);
    set(&mut fields, "machines[0].cpu_cores", "64");
    set(&mut fields, "usage_policy.windows[0].end", "20:00");
    let mistaken = donor.post("/ui/donations/new", &fields).await;
    assert_eq!(mistaken.status, 422);
    assert!(mistaken.body.contains("不能与开始时间相同"), "{}", mistaken.body);
    assert!(!mistaken.body.contains("must differ"), "no English on a Chinese page");

    // A refusal of an action (a 409 from the donation's rules) is in Chinese too, with the
    // donation's status and the action in words.
    let donation = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            usage_right_form(&w.a.site_id, "PLUM-ZH-2", vec![machine("riscv64", "RV-ZH-2")]),
        )
        .await
        .expect(201);
    let page = format!("/ui/donations/{}", id_of(&donation.body));
    let token = donor.get(&page).await.csrf();
    let refused = donor.post(&format!("{page}/act"), &[("_csrf", &token), ("action", "resume")]).await;
    assert_eq!(refused.status, 409);
    assert!(refused.body.contains("处于“已提交”状态的捐赠不能执行“恢复”"), "{}", refused.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_approve_a_donation_find_its_machine_and_export_the_list() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let donation = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            usage_right_form(&w.a.site_id, "PLUM-OPS-1", vec![machine("riscv64", "RV-OPS-1")]),
        )
        .await
        .expect(201);
    let id = id_of(&donation.body);
    let email = ops_account(&app, &w.admin).await;
    let mut ops = Browser::new(&app, "en-US");
    ops.sign_in(&email).await;
    let review = ops.get("/ui/donations").await;
    assert!(review.body.contains("PLUM-OPS-1"), "a submitted donation waits for review");
    let page = ops.get(&format!("/ui/donations/{id}")).await;
    let approved =
        ops.post(&format!("/ui/donations/{id}/act"), &[("_csrf", &page.csrf()), ("action", "approve")]).await;
    assert_eq!(approved.status, 303);
    let api = app.get(&format!("/api/v1/donations/{id}"), &w.admin).await;
    assert_eq!(api.body["status"], "approved");

    // The dashboard shows the API's numbers.
    let overview = app.get("/api/v1/overview", &w.admin).await.expect(200).body;
    let dashboard = ops.get("/ui/dashboard").await.body;
    assert_eq!(overview["machines"], 1);
    assert!(dashboard.contains("One machine ·"), "{dashboard}");
    assert_eq!(overview["by_arch"]["riscv64"], 1);
    let row = &dashboard[dashboard.find("arch=riscv64\">riscv64</a>").expect("a riscv64 row")..];
    assert!(row[..200.min(row.len())].contains("</span> 1</td>"), "the riscv64 row: {}", &row[..200.min(row.len())]);
    assert_eq!(overview["awaiting_review"]["total"], 0);

    let list = ops.get("/ui/machines?arch=riscv64&q=rv-ops").await;
    assert!(list.body.contains("RV-OPS-1"));
    assert!(!ops.get("/ui/machines?arch=x86_64").await.body.contains("RV-OPS-1"));
    let csv = ops.get("/ui/machines.csv?arch=riscv64").await;
    assert_eq!(csv.status, 200);
    let mut lines = csv.body.lines();
    assert!(lines.next().unwrap().starts_with("id,hostname,asset_tag,arch"));
    assert!(lines.any(|l| l.contains("RV-OPS-1") && l.contains("riscv64")));

    // Signing out ends the session everywhere: a browser that kept the cookie is sent to sign
    // in again, and a form it posts is not carried out (back to its page after signing in).
    let kept = ops.cookies.clone();
    let token = ops.get("/ui/dashboard").await.csrf();
    assert_eq!(ops.post("/ui/logout", &[("_csrf", &token)]).await.location.as_deref(), Some("/ui/login"));
    assert_eq!(ops.get("/ui/dashboard").await.status, 303);
    ops.cookies = kept;
    let stale = ops.get("/ui/dashboard").await;
    assert_eq!(stale.location.as_deref(), Some("/ui/login?next=%2Fui%2Fdashboard"));
    let posted = ops
        .client
        .post(format!("{}/ui/donations/{id}/act", ops.base))
        .header("referer", format!("{}/ui/donations/{id}", ops.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_html_form::to_string([("_csrf", token.as_str()), ("action", "return")]).unwrap());
    let refused = ops.send(posted).await;
    assert_eq!(refused.status, 303);
    assert_eq!(refused.location, Some(format!("/ui/login?next=%2Fui%2Fdonations%2F{id}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_page_says_why_a_lease_waits() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    app.ready_pool(&w, "ownership", None, vec![pool_machine("riscv64", "RV-Q-1", 8, 16)]).await;
    let runner =
        json!({ "requirements": { "arch": "riscv64" }, "purpose": "ci", "duration_minutes": 60, "tenant": "sig-q" });
    app.post("/api/v1/leases", &w.ci, runner.clone()).await.expect(201);
    app.post("/api/v1/leases", &w.ci, runner).await.expect(202);
    let email = ops_account(&app, &w.admin).await;
    let mut ops = Browser::new(&app, "en-US");
    ops.sign_in(&email).await;
    let queue = ops.get("/ui/queue").await;
    assert_eq!(queue.status, 200);
    assert!(queue.body.contains("every machine that fits is busy"), "{}", queue.body);
    let mut zh = Browser::new(&app, "zh-CN");
    zh.sign_in(&email).await;
    assert!(zh.get("/ui/queue").await.body.contains("所有合适的机器都在忙"));

    // Utilisation counts the lease that ended (kept by the trigger as it ends) and the one
    // still running (added up live); a second later each has held the machine a little.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let first = app.get("/api/v1/leases?state=granted", &w.ci).await.expect(200).body["items"][0]["id"].clone();
    app.post(&format!("/api/v1/leases/{}/release", first.as_str().unwrap()), &w.ci, json!({})).await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let overview = app.get("/api/v1/overview", &w.admin).await.expect(200).body;
    let riscv = overview["utilisation"].as_array().unwrap().iter().find(|a| a["arch"] == "riscv64").unwrap().clone();
    let today = riscv["days"].as_array().unwrap().last().unwrap().clone();
    let hours = today["leased_hours"].as_f64().unwrap();
    assert!((0.0004..0.01).contains(&hours), "two leases of a second or two each: {today}");
    assert_eq!(riscv["days"].as_array().unwrap().len(), 30);
}
