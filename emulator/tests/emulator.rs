//! The `pc-emulator` binary, run for real on 127.0.0.1:0 and driven over
//! HTTP: the API rules, auth, the admin endpoints and every fault kind.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "test-token";
const CONTOSO: &str = "9c1f2a7e-5b3d-4e8a-9f61-2d7c8b4a0e11";
const FABRIKAM: &str = "2b8e6d14-0f7a-4c39-b5e2-8d91a3c7f602";
const LITWARE_CLOSED: &str = "4111fffc-f9ee-4d53-bba6-569135228642";

/// A running `pc-emulator`, killed when dropped.
struct Emulator {
    child: Child,
    base: String,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Emulator {
    /// Seeded from `examples/emulator-seed.json`.
    fn start(extra: &[&str]) -> Emulator {
        let seed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/emulator-seed.json");
        Self::start_with_seed_file(seed, extra, tempfile::tempdir().unwrap())
    }

    fn start_with_seed(seed: &Value, extra: &[&str]) -> Emulator {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.json");
        std::fs::write(&path, serde_json::to_vec(seed).unwrap()).unwrap();
        Self::start_with_seed_file(path, extra, dir)
    }

    fn start_with_seed_file(seed: PathBuf, extra: &[&str], dir: tempfile::TempDir) -> Emulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pc-emulator"))
            .args(["--listen", "127.0.0.1:0", "--token", TOKEN, "--seed"])
            .arg(&seed)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(address.starts_with("http://127.0.0.1:"), "{address}");
        Emulator {
            child,
            base: address,
            client: Client::builder().no_proxy().build().unwrap(),
            _dir: dir,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}/v1.0{path}", self.base)
    }

    fn admin(&self, path: &str) -> String {
        format!("{}/_admin{path}", self.base)
    }

    fn referral_url(&self, id: &str) -> String {
        self.api(&format!("/engagements/referrals/{id}"))
    }

    async fn stored(&self, id: &str) -> Value {
        self.client
            .get(self.admin(&format!("/referrals/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn journal(&self) -> Vec<Value> {
        let body: Value = self
            .client
            .get(self.admin("/requests"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["value"].as_array().unwrap().clone()
    }

    async fn add_faults(&self, rules: Value) {
        let response = self
            .client
            .post(self.admin("/faults"))
            .json(&rules)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    fn patch(&self, id: &str, operations: &Value) -> reqwest::RequestBuilder {
        self.client
            .patch(self.referral_url(id))
            .bearer_auth(TOKEN)
            .json(operations)
    }

    fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the emulator did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client saw a TCP reset, not an HTTP answer nor a timeout.
fn is_connection_reset(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionReset;
        }
        source = current.source();
    }
    false
}

fn etag(document: &Value) -> String {
    document["eTag"].as_str().unwrap().to_owned()
}

fn new_referral() -> Value {
    json!({
        "name": "Northwind field service rollout",
        "externalReferenceId": "3f2504e0-4f89-41d3-9a0c-0305e82c3303",
        "type": "Independent",
        "qualification": "SalesQualified",
        "customerProfile": {"name": "Northwind Traders", "address": {"country": "US"}},
        "consent": {"consentToToShareInfoWithOthers": true, "consentToContact": true},
        "details": {"dealValue": 42000.5, "currency": "USD", "closingDateTime": "2024-06-15T00:00:00Z"},
    })
}

#[tokio::test]
async fn lists_250_referrals_in_three_pages_by_following_next_links() {
    // Pairs of referrals share a creation time, so the id must break ties.
    let seed: Vec<Value> = (0..250)
        .map(|n| {
            json!({
                "id": format!("referral-{n:03}"),
                "createdDateTime": format!("2024-01-01T00:{:02}:{:02}Z", n / 120, (n / 2) % 60),
                "status": "New",
                "substatus": "Received",
            })
        })
        .collect();
    let emulator = Emulator::start_with_seed(&json!(seed), &[]);

    let mut url = emulator.api("/engagements/referrals");
    let mut page_sizes = Vec::new();
    let mut ids = Vec::new();
    loop {
        let page: Value = emulator
            .client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["@odata.count"], 250);
        let value = page["value"].as_array().unwrap();
        page_sizes.push(value.len());
        ids.extend(value.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&emulator.api("/engagements/referrals?")),
                    "{next}"
                );
                assert!(next.contains("$skiptoken="), "{next}");
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(page_sizes, [100, 100, 50]);
    let expected: Vec<String> = (0..250).map(|n| format!("referral-{n:03}")).collect();
    assert_eq!(ids, expected);

    let capped: Value = emulator
        .client
        .get(emulator.api("/engagements/referrals?$top=500"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(capped["value"].as_array().unwrap().len(), 100);
    let small: Value = emulator
        .client
        .get(emulator.api("/engagements/referrals?$top=7"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(small["value"].as_array().unwrap().len(), 7);
    assert!(
        small["@odata.nextLink"]
            .as_str()
            .unwrap()
            .contains("$top=7&")
    );
}

#[tokio::test]
async fn get_returns_the_referral_with_links_and_its_etag_header() {
    let emulator = Emulator::start(&[]);
    let response = emulator
        .client
        .get(emulator.referral_url(CONTOSO))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = response.headers()["etag"].to_str().unwrap().to_owned();
    let referral: Value = response.json().await.unwrap();
    assert_eq!(header, "\"4a00d1c7-0000-0000-0000-66211b430000\"");
    assert_eq!(etag(&referral), header);
    assert_eq!(
        referral["externalReferenceId"],
        "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    );
    assert_eq!(
        referral["links"]["self"]["uri"],
        emulator.referral_url(CONTOSO)
    );
    assert_eq!(
        referral["links"]["relatedReferrals"]["uri"],
        emulator.api(
            "/engagements/referrals?$filter=engagementId eq '5e0b8f3a-2c41-4d7e-8a9b-1f6c3d2e4a01'"
        )
    );
    // Links are computed per response, never stored.
    assert!(emulator.stored(CONTOSO).await.get("links").is_none());

    let missing = emulator
        .client
        .get(emulator.referral_url("no-such-referral"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "referralNotFound");
    assert_eq!(error["error"]["target"], "no-such-referral");
}

#[tokio::test]
async fn patch_with_prefer_returns_the_updated_referral_and_a_new_etag() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(CONTOSO).await;
    let response = emulator
        .patch(
            CONTOSO,
            &json!([
                {"op": "replace", "path": "/details/dealValue", "value": 50000},
                {"op": "add", "path": "/details/requirements/products/-", "value": {"id": "Azure"}},
            ]),
        )
        .header("If-Match", etag(&before))
        .header("Prefer", "return=representation")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = response.headers()["etag"].to_str().unwrap().to_owned();
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["details"]["dealValue"], 50000);
    assert_eq!(
        patched["details"]["requirements"]["products"],
        json!([{"id": "Dynamics365Enterprise"}, {"id": "Azure"}])
    );
    assert_ne!(etag(&patched), etag(&before));
    assert_eq!(etag(&patched), header);
    assert!(patched["updatedDateTime"].as_str() > before["updatedDateTime"].as_str());
    assert_eq!(patched["createdDateTime"], before["createdDateTime"]);
    // What the seller set and the patch did not touch is kept.
    assert_eq!(patched["customerProfile"]["size"], "51to500employees");
    assert!(patched["links"]["self"].is_object());
    let mut stored = patched.clone();
    stored.as_object_mut().unwrap().remove("links");
    assert_eq!(emulator.stored(CONTOSO).await, stored);
}

#[tokio::test]
async fn patch_without_prefer_answers_204_with_an_empty_body_and_the_new_etag() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(FABRIKAM).await;
    let response = emulator
        .patch(
            FABRIKAM,
            &json!([
                {"op": "replace", "path": "/status", "value": "Active"},
                {"op": "replace", "path": "/substatus", "value": "Accepted"},
            ]),
        )
        .header("If-Match", etag(&before))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let header = response.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(response.bytes().await.unwrap().len(), 0);
    let after = emulator.stored(FABRIKAM).await;
    assert_eq!(after["status"], "Active");
    assert_eq!(after["substatus"], "Accepted");
    assert_eq!(etag(&after), header);
    assert_ne!(header, etag(&before));
}

#[tokio::test]
async fn patch_operations_other_than_add_and_replace_are_refused() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(CONTOSO).await;
    for (operation, op) in [
        (json!({"op": "remove", "path": "/details/notes"}), "remove"),
        (
            json!({"op": "move", "from": "/name", "path": "/statusReason"}),
            "move",
        ),
        (
            json!({"op": "copy", "from": "/name", "path": "/statusReason"}),
            "copy",
        ),
        (json!({"op": "test", "path": "/name", "value": "x"}), "test"),
    ] {
        let body = json!([{"op": "replace", "path": "/name", "value": "renamed"}, operation]);
        let response = emulator.patch(CONTOSO, &body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{op}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unsupportedPatchOperation");
        assert_eq!(error["error"]["target"], "/1");
        assert_eq!(
            error["error"]["message"],
            format!("patch operation 1 is \"{op}\": only \"add\" and \"replace\" are supported")
        );
    }
    assert_eq!(emulator.stored(CONTOSO).await, before);
}

#[tokio::test]
async fn read_only_fields_cannot_be_patched() {
    let emulator = Emulator::start(&[]);
    for field in ["id", "eTag", "createdDateTime", "updatedDateTime", "links"] {
        let response = emulator
            .patch(
                CONTOSO,
                &json!([{"op": "replace", "path": format!("/{field}"), "value": "x"}]),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{field}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "readOnlyField");
        assert_eq!(error["error"]["target"], format!("/{field}"));
    }
}

#[tokio::test]
async fn a_stale_if_match_is_refused_with_412_and_changes_nothing() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(CONTOSO).await;
    let response = emulator
        .patch(
            CONTOSO,
            &json!([{"op": "replace", "path": "/name", "value": "renamed"}]),
        )
        .header("If-Match", "\"00000000-0000-0000-0000-000000000000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "preconditionFailed");
    assert_eq!(error["error"]["target"], CONTOSO);
    assert_eq!(emulator.stored(CONTOSO).await, before);
}

#[tokio::test]
async fn a_closed_referral_cannot_move_back_to_active() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(LITWARE_CLOSED).await;
    let response = emulator
        .patch(
            LITWARE_CLOSED,
            &json!([
                {"op": "replace", "path": "/status", "value": "Active"},
                {"op": "replace", "path": "/substatus", "value": "Accepted"},
            ]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalidStatusTransition");
    assert_eq!(
        error["error"]["message"],
        "status Closed cannot move to Active"
    );
    assert_eq!(emulator.stored(LITWARE_CLOSED).await, before);

    let mismatched = emulator
        .patch(
            CONTOSO,
            &json!([{"op": "replace", "path": "/status", "value": "Closed"}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), StatusCode::BAD_REQUEST);
    let error: Value = mismatched.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalidSubstatus");
    assert_eq!(
        error["error"]["message"],
        "substatus Accepted is not valid with status Closed"
    );
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let emulator = Emulator::start(&[]);
    let url = emulator.referral_url(CONTOSO);
    let missing = emulator.client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unauthorized");
    assert_eq!(
        error["error"]["message"],
        "the request has no Authorization: Bearer token"
    );
    let wrong = emulator
        .client
        .get(&url)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let journal = emulator.journal().await;
    assert_eq!(journal.len(), 2);
    for entry in &journal {
        assert_eq!(entry["authorized"], false);
        assert_eq!(entry["status"], 401);
        assert_eq!(entry["outcome"], "rejected");
    }
}

#[tokio::test]
async fn post_needs_the_required_members_and_creates_a_new_referral() {
    let emulator = Emulator::start(&[]);
    let mut incomplete = new_referral();
    incomplete.as_object_mut().unwrap().remove("consent");
    let refused = emulator
        .client
        .post(emulator.api("/engagements/referrals"))
        .bearer_auth(TOKEN)
        .json(&incomplete)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "missingField");
    assert_eq!(error["error"]["target"], "consent");
    assert_eq!(error["error"]["message"], "consent is required");

    let created = emulator
        .client
        .post(emulator.api("/engagements/referrals"))
        .bearer_auth(TOKEN)
        .json(&new_referral())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let referral: Value = created.json().await.unwrap();
    let id = referral["id"].as_str().unwrap();
    assert_eq!(location, emulator.referral_url(id));
    assert_eq!(referral["status"], "New");
    assert_eq!(referral["substatus"], "Received");
    assert!(referral["engagementId"].is_string());
    assert!(etag(&referral).starts_with('"'));
    assert_eq!(referral["createdDateTime"], referral["updatedDateTime"]);
    assert_eq!(referral["details"]["dealValue"], 42000.5);

    let fetched: Value = emulator
        .client
        .get(&location)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, referral);
}

#[tokio::test]
async fn put_needs_if_match_refuses_links_and_keeps_service_fields() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(CONTOSO).await;
    let mut body = before.clone();
    body["name"] = json!("Contoso supply chain on Dynamics 365");
    body["createdDateTime"] = json!("2000-01-01T00:00:00Z");
    let url = emulator.referral_url(CONTOSO);

    let without_if_match = emulator
        .client
        .put(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(without_if_match.status(), StatusCode::PRECONDITION_REQUIRED);

    let mut with_links = body.clone();
    with_links["links"] = json!({"self": {"uri": url, "method": "GET"}});
    let refused = emulator
        .client
        .put(&url)
        .bearer_auth(TOKEN)
        .header("If-Match", etag(&before))
        .json(&with_links)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["target"], "/links");

    let replaced = emulator
        .client
        .put(&url)
        .bearer_auth(TOKEN)
        .header("If-Match", etag(&before))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), StatusCode::OK);
    let replaced: Value = replaced.json().await.unwrap();
    assert_eq!(replaced["name"], "Contoso supply chain on Dynamics 365");
    assert_eq!(replaced["createdDateTime"], before["createdDateTime"]);
    assert_ne!(etag(&replaced), etag(&before));
}

#[tokio::test]
async fn the_token_endpoint_rotates_refresh_tokens_and_issued_tokens_expire() {
    let emulator = Emulator::start(&[
        "--refresh-token",
        "seed-refresh",
        "--token-lifetime-secs",
        "2",
    ]);
    let token_url = format!("{}/contoso.onmicrosoft.com/oauth2/token", emulator.base);
    let redeem = |refresh: &str| {
        emulator.client.post(&token_url).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "11111111-2222-3333-4444-555555555555"),
            ("resource", "https://api.partner.microsoft.com"),
            ("client_secret", "shh"),
        ])
    };

    let first = redeem("seed-refresh").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 2);
    let access = first["access_token"].as_str().unwrap().to_owned();
    let rotated = first["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, "seed-refresh");

    let url = emulator.referral_url(CONTOSO);
    let ok = emulator
        .client
        .get(&url)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    let second: Value = redeem(&rotated).send().await.unwrap().json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);

    let invalid = redeem("forged").send().await.unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    let error: Value = invalid.json().await.unwrap();
    assert_eq!(error["error"], "invalid_grant");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = emulator
        .client
        .get(&url)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    let error: Value = expired.json().await.unwrap();
    assert_eq!(error["error"]["message"], "the access token has expired");

    // Token requests are journaled without the client secret.
    let journal = emulator.journal().await;
    let grant = &journal[0];
    assert_eq!(grant["path"], "/contoso.onmicrosoft.com/oauth2/token");
    assert_eq!(grant["authorized"], Value::Null);
    assert_eq!(grant["outcome"], "applied");
    assert_eq!(grant["body"]["refresh_token"], "seed-refresh");
    assert_eq!(grant["body"]["client_secret"], "<redacted>");
}

#[tokio::test]
async fn admin_expiry_makes_every_token_fail() {
    let emulator = Emulator::start(&[]);
    let expired: Value = emulator
        .client
        .post(emulator.admin("/tokens/expire"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(expired["expired"], 1);
    let response = emulator
        .client
        .get(emulator.referral_url(CONTOSO))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_seller_edit_bumps_the_etag_so_the_old_one_is_stale() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(CONTOSO).await;
    let edited = emulator
        .client
        .post(emulator.admin(&format!("/referrals/{CONTOSO}/edit")))
        .json(&json!([
            {"op": "replace", "path": "/customerProfile/size", "value": "Morethan500employees"},
            {"op": "remove", "path": "/details/notes"},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), StatusCode::OK);
    let edited: Value = edited.json().await.unwrap();
    assert_eq!(edited["customerProfile"]["size"], "Morethan500employees");
    assert!(edited["details"].get("notes").is_none());
    assert_ne!(etag(&edited), etag(&before));
    assert!(edited["updatedDateTime"].as_str() > before["updatedDateTime"].as_str());

    let stale = emulator
        .patch(
            CONTOSO,
            &json!([{"op": "replace", "path": "/name", "value": "x"}]),
        )
        .header("If-Match", etag(&before))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    // Seller edits are not API requests: the journal holds only the PATCH.
    assert_eq!(emulator.journal().await.len(), 1);
}

#[tokio::test]
async fn a_seller_edit_under_if_match_is_refused_once_the_referral_moved_on() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(CONTOSO).await;
    let edit = |value: &str, etag: &str| {
        emulator
            .client
            .post(emulator.admin(&format!("/referrals/{CONTOSO}/edit")))
            .header("If-Match", etag.to_owned())
            .json(&json!([{"op": "replace", "path": "/name", "value": value}]))
            .send()
    };
    let first = edit("first", &etag(&before)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let stale = edit("stale", &etag(&before)).await.unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(emulator.stored(CONTOSO).await["name"], "first");
}

#[tokio::test]
async fn admin_inserts_and_removes_referrals() {
    let emulator = Emulator::start(&[]);
    let inserted = emulator
        .client
        .post(emulator.admin("/referrals"))
        .json(&json!({"id": "from-microsoft", "status": "New", "substatus": "Pending", "name": "Incoming"}))
        .send()
        .await
        .unwrap();
    assert_eq!(inserted.status(), StatusCode::CREATED);
    let all: Value = emulator
        .client
        .get(emulator.admin("/referrals"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = all["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [LITWARE_CLOSED, CONTOSO, FABRIKAM, "from-microsoft"]);

    let duplicate = emulator
        .client
        .post(emulator.admin("/referrals"))
        .json(&json!({"id": "from-microsoft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);

    let removed = emulator
        .client
        .delete(emulator.admin("/referrals/from-microsoft"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let gone = emulator
        .client
        .get(emulator.referral_url("from-microsoft"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_status_fault_answers_429_with_retry_after_without_applying() {
    let emulator = Emulator::start(&[]);
    emulator
        .add_faults(json!({"method": "PATCH", "path_contains": CONTOSO, "kind": "status", "status": 429, "retry_after": 3}))
        .await;
    let before = emulator.stored(CONTOSO).await;
    let operations = json!([{"op": "replace", "path": "/name", "value": "renamed"}]);

    let throttled = emulator.patch(CONTOSO, &operations).send().await.unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "3");
    let error: Value = throttled.json().await.unwrap();
    assert_eq!(error["error"]["code"], "tooManyRequests");
    assert_eq!(emulator.stored(CONTOSO).await, before);

    // The rule acted once (the default); the retry goes through.
    let retried = emulator.patch(CONTOSO, &operations).send().await.unwrap();
    assert_eq!(retried.status(), StatusCode::NO_CONTENT);
    assert_eq!(emulator.stored(CONTOSO).await["name"], "renamed");

    let journal = emulator.journal().await;
    assert_eq!(journal[0]["outcome"], "fault:status");
    assert_eq!(journal[0]["fault"], "status");
    assert_eq!(journal[0]["status"], 429);
    assert_eq!(journal[1]["outcome"], "applied");
    assert_eq!(journal[1]["fault"], Value::Null);

    let faults: Value = emulator
        .client
        .get(emulator.admin("/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["value"][0]["matched"], 2);
    assert_eq!(faults["value"][0]["fired"], 1);
}

#[tokio::test]
async fn reset_before_drops_the_connection_and_changes_nothing() {
    let emulator = Emulator::start(&[]);
    emulator
        .add_faults(json!([{"method": "PATCH", "kind": "reset_before"}]))
        .await;
    let before = emulator.stored(CONTOSO).await;
    let result = emulator
        .patch(
            CONTOSO,
            &json!([{"op": "replace", "path": "/name", "value": "renamed"}]),
        )
        .send()
        .await;
    let error = result.expect_err("a reset is not an HTTP answer");
    assert!(is_connection_reset(&error), "{error:?}");
    assert_eq!(emulator.stored(CONTOSO).await, before);

    let journal = emulator.journal().await;
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0]["outcome"], "fault:reset_before");
    assert_eq!(journal[0]["status"], Value::Null);
    assert_eq!(journal[0]["body"][0]["value"], "renamed");
}

#[tokio::test]
async fn reset_after_applies_the_write_and_then_drops_the_connection() {
    let emulator = Emulator::start(&[]);
    emulator
        .add_faults(json!([{"method": "PATCH", "kind": "reset_after"}]))
        .await;
    let before = emulator.stored(CONTOSO).await;
    let result = emulator
        .patch(
            CONTOSO,
            &json!([{"op": "replace", "path": "/name", "value": "renamed"}]),
        )
        .header("If-Match", etag(&before))
        .send()
        .await;
    let error = result.expect_err("a reset is not an HTTP answer");
    assert!(is_connection_reset(&error), "{error:?}");
    let after = emulator.stored(CONTOSO).await;
    assert_eq!(after["name"], "renamed");
    assert_ne!(etag(&after), etag(&before));

    let journal = emulator.journal().await;
    assert_eq!(journal[0]["outcome"], "fault:reset_after");
    assert_eq!(journal[0]["status"], 204);

    // A client retrying with the eTag it had now gets 412: the lost
    // acknowledgement case a sync must handle.
    let retried = emulator
        .patch(
            CONTOSO,
            &json!([{"op": "replace", "path": "/name", "value": "renamed"}]),
        )
        .header("If-Match", etag(&before))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn a_delay_fault_holds_the_answer_and_a_client_that_gives_up_changes_nothing() {
    let emulator = Emulator::start(&[]);
    emulator
        .add_faults(json!([
            {"method": "PATCH", "kind": "delay", "ms": 300},
            {"method": "PATCH", "after": 1, "kind": "delay", "ms": 2000},
        ]))
        .await;
    let started = Instant::now();
    let patient = emulator
        .patch(
            CONTOSO,
            &json!([{"op": "replace", "path": "/name", "value": "first"}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(patient.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(emulator.stored(CONTOSO).await["name"], "first");

    let impatient = emulator
        .patch(
            CONTOSO,
            &json!([{"op": "replace", "path": "/name", "value": "second"}]),
        )
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(impatient.expect_err("the client times out").is_timeout());

    // The client is gone before the delay ends: nothing is applied.
    let deadline = Instant::now() + Duration::from_secs(5);
    let journal = loop {
        let journal = emulator.journal().await;
        if journal[1]["outcome"] != "in_progress" || Instant::now() > deadline {
            break journal;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(journal[0]["outcome"], "applied");
    assert_eq!(journal[0]["fault"], "delay");
    assert!(journal[0]["duration_ms"].as_u64().unwrap() >= 300);
    assert_eq!(journal[1]["outcome"], "abandoned");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(emulator.stored(CONTOSO).await["name"], "first");
}

#[tokio::test]
async fn fault_rules_load_from_a_file_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults.json");
    std::fs::write(
        &faults,
        r#"[{"method": "GET", "path_contains": "/engagements/referrals", "kind": "status", "status": 503, "retry_after": 1, "body": {"statusCode": 503, "message": "busy"}}]"#,
    )
    .unwrap();
    let emulator = Emulator::start(&["--faults", faults.to_str().unwrap()]);
    let url = emulator.api("/engagements/referrals");
    let unavailable = emulator
        .client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.headers()["retry-after"], "1");
    let body: Value = unavailable.json().await.unwrap();
    assert_eq!(body, json!({"statusCode": 503, "message": "busy"}));
    let ok = emulator
        .client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    let cleared = emulator
        .client
        .delete(emulator.admin("/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    let invalid = emulator
        .client
        .post(emulator.admin("/faults"))
        .json(&json!([{"kind": "delay"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    let error: Value = invalid.json().await.unwrap();
    assert_eq!(
        error["error"]["message"],
        "fault rule 0: kind delay needs ms"
    );
}

#[tokio::test]
async fn the_journal_records_what_the_client_sent_and_what_became_of_it() {
    let emulator = Emulator::start(&[]);
    let before = emulator.stored(CONTOSO).await;
    let operations = json!([{"op": "replace", "path": "/details/dealValue", "value": 50000}]);
    let response = emulator
        .patch(CONTOSO, &operations)
        .header("If-Match", etag(&before))
        .header("Prefer", "return=representation")
        .header("MS-CorrelationId", "c0ffee00-0000-4000-8000-000000000001")
        .header("MS-RequestId", "c0ffee00-0000-4000-8000-000000000002")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let listed = emulator
        .client
        .get(emulator.api("/engagements/referrals?$top=2"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);

    let journal = emulator.journal().await;
    assert_eq!(journal.len(), 2);
    let patch = &journal[0];
    assert_eq!(patch["seq"], 1);
    assert_eq!(patch["method"], "PATCH");
    assert_eq!(
        patch["path"],
        format!("/v1.0/engagements/referrals/{CONTOSO}")
    );
    assert_eq!(patch["query"], Value::Null);
    assert_eq!(patch["if_match"], etag(&before));
    assert_eq!(patch["prefer"], "return=representation");
    assert_eq!(
        patch["correlation_id"],
        "c0ffee00-0000-4000-8000-000000000001"
    );
    assert_eq!(patch["request_id"], "c0ffee00-0000-4000-8000-000000000002");
    assert_eq!(patch["authorized"], true);
    assert_eq!(patch["body"], operations);
    assert_eq!(patch["status"], 200);
    assert_eq!(patch["outcome"], "applied");
    assert!(patch["at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let list = &journal[1];
    assert_eq!(list["seq"], 2);
    assert_eq!(list["query"], "$top=2");
    assert_eq!(list["outcome"], "served");

    let cleared = emulator
        .client
        .delete(emulator.admin("/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert!(emulator.journal().await.is_empty());
    emulator
        .client
        .get(emulator.api("/engagments/referrals"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let journal = emulator.journal().await;
    // Sequence numbers keep counting after a clear; wrong paths show up too.
    assert_eq!(journal[0]["seq"], 3);
    assert_eq!(journal[0]["status"], 404);
    let since: Value = emulator
        .client
        .get(emulator.admin("/requests?since=3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(since["value"], json!([]));
}

#[tokio::test]
async fn latency_is_added_to_every_api_request() {
    let emulator = Emulator::start(&["--latency-ms", "250"]);
    let started = Instant::now();
    let response = emulator
        .client
        .get(emulator.referral_url(CONTOSO))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn sigterm_and_admin_shutdown_exit_cleanly() {
    let mut by_signal = Emulator::start(&[]);
    let killed = Command::new("kill")
        .args(["-TERM", &by_signal.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(by_signal.wait_for_exit(Duration::from_secs(10)).success());

    let mut by_admin = Emulator::start(&[]);
    let response = by_admin
        .client
        .post(by_admin.admin("/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(by_admin.wait_for_exit(Duration::from_secs(10)).success());
}

#[test]
fn a_non_loopback_address_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_pc-emulator"))
        .args(["--listen", "0.0.0.0:0", "--token", TOKEN])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0: not a loopback address"),
        "{stderr}"
    );
}

#[test]
fn a_bad_seed_is_reported_with_its_file_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(&seed, r#"[{"id": "a"}, {"id": "a"}]"#).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pc-emulator"))
        .args(["--listen", "127.0.0.1:0", "--seed"])
        .arg(&seed)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot seed from"), "{stderr}");
    assert!(
        stderr.contains("seed referral 1 (id a): a referral with id a already exists"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_create_keeps_the_newer_members_and_refuses_them_in_the_wrong_shape() {
    let emulator = Emulator::start(&[]);
    let mut body = new_referral();
    body["partnerRole"] = json!("Seller");
    body["solutionArea"] = json!("Business Applications");
    body["solutionPlay"] = json!("Finance and Supply Chain");
    body["consent"]["consentToShareReferralWithMicrosoftSellers"] = json!(true);
    body["customerProfile"]["ids"] = json!([{"profileType": "Duns", "id": "123456789"}]);
    body["details"]["requirements"] = json!({
        "industries": [{"id": "ind-1"}],
        "solutions": [{"id": "sol-1", "name": "Dynamics 365 Finance", "type": "MicrosoftSolution"}],
    });
    let created = emulator
        .client
        .post(emulator.api("/engagements/referrals"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let referral: Value = created.json().await.unwrap();
    let stored = emulator.stored(referral["id"].as_str().unwrap()).await;
    for pointer in [
        "/partnerRole",
        "/solutionArea",
        "/solutionPlay",
        "/consent/consentToShareReferralWithMicrosoftSellers",
        "/customerProfile/ids",
        "/details/requirements",
    ] {
        assert_eq!(stored.pointer(pointer), body.pointer(pointer), "{pointer}");
    }

    for (pointer, value) in [
        ("/solutionArea", json!(7)),
        ("/details/requirements/solutions", json!({"id": "x"})),
    ] {
        let mut wrong = new_referral();
        let (parent, member) = pointer.rsplit_once('/').unwrap();
        if parent.is_empty() {
            wrong[member] = value;
        } else {
            wrong["details"]["requirements"] = json!({});
            wrong.pointer_mut(parent).unwrap()[member] = value;
        }
        let refused = emulator
            .client
            .post(emulator.api("/engagements/referrals"))
            .bearer_auth(TOKEN)
            .json(&wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{pointer}");
    }
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_the_journal_keeps_the_clients_ids() {
    let emulator = Emulator::start(&[]);
    let answer = emulator
        .client
        .get(emulator.referral_url(CONTOSO))
        .bearer_auth(TOKEN)
        .header("client-request-id", "c0ffee00-0000-4000-8000-000000000001")
        .header("MS-RequestId", "c0ffee00-0000-4000-8000-000000000002")
        .send()
        .await
        .unwrap();
    let request_id = answer.headers()["request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::try_parse(&request_id).is_ok(), "{request_id}");
    let refused = emulator
        .client
        .get(emulator.referral_url(CONTOSO))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let refused_id = refused.headers()["request-id"].to_str().unwrap().to_owned();
    assert_ne!(refused_id, request_id);
    let journal = emulator.journal().await;
    assert_eq!(
        journal[0]["client_request_id"],
        "c0ffee00-0000-4000-8000-000000000001"
    );
    assert_eq!(
        journal[0]["request_id"],
        "c0ffee00-0000-4000-8000-000000000002"
    );
    assert_eq!(journal[0]["service_request_id"], json!(request_id));
    assert_eq!(journal[1]["service_request_id"], json!(refused_id));
}
