//! A Partner Center Referrals API emulator, in memory, for loopback tests
//! and for trying referral-sync without an account.
//!
//! It serves the API under `/v1.0` (so `api.base_url` is
//! `http://127.0.0.1:PORT/v1.0`), a refresh-token grant at
//! `/{tenant}/oauth2/token`, and unauthenticated `/_admin` endpoints to
//! inspect and steer it: the referrals, a journal of every request received,
//! fault rules, token expiry.
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /v1.0/engagements/referrals` | pages of at most 100 (`$top`, `$skiptoken`, `$orderby`, `$filter` on engagementId/status/substatus/type, `$select`), `@odata.count`, absolute `@odata.nextLink` |
//! | `GET /v1.0/engagements/referrals/{id}` | the referral with `links`; `ETag` header |
//! | `POST /v1.0/engagements/referrals` | create: 201 with the referral |
//! | `PATCH /v1.0/engagements/referrals/{id}` | add/replace only; `If-Match`; `Prefer: return=representation` gives 200 with the referral, else 204 |
//! | `PUT /v1.0/engagements/referrals/{id}` | full replace; `If-Match` required (428 without) |
//! | `POST /{tenant}/oauth2/token` | v1 refresh-token grant (`resource`); rotates the refresh token |
//! | `POST /{tenant}/oauth2/v2.0/devicecode` | starts a device-code sign-in (RFC 8628): `device_code`, `user_code`, `verification_uri`, `interval` |
//! | `POST /{tenant}/oauth2/v2.0/token` | v2 (`scope`): the refresh-token grant and the device-code grant (`authorization_pending`, `slow_down`, `expired_token`, `access_denied`) |
//! | `GET /_admin/device-codes`, `POST /_admin/device-codes/{user_code}/approve` or `/deny` | the pending sign-ins, and a person's answer to one |
//! | `GET /_admin/referrals`, `GET /_admin/referrals/{id}` | stored referrals (no `links`), `{"value": [...]}` |
//! | `POST /_admin/referrals` | insert a referral as is (201); 409 if the id exists |
//! | `DELETE /_admin/referrals/{id}` | the referral is gone (204) |
//! | `POST /_admin/referrals/{id}/edit` | a seller's edit: any JSON Patch op, no status rules, new eTag; with `If-Match`, 412 unless it names the current eTag |
//! | `GET /_admin/requests[?since=SEQ]`, `DELETE /_admin/requests` | the journal ([`JournalEntry`]) |
//! | `GET`, `POST`, `DELETE /_admin/faults` | fault rules ([`faults`]) with `matched`/`fired` counters |
//! | `POST /_admin/tokens/expire` | every access token expires now |
//! | `POST /_admin/shutdown` | stop serving (202) |
//!
//! The service rules (status moves, read-only fields, `If-Match`, the
//! add/replace-only patch) are implemented here independently of the
//! client's own modules, so the emulator can act as a test oracle for them.
//!
//! Code map: [`rules`] and [`listing`] are the pure rules and query
//! options; [`store`] holds the referrals; [`faults`], [`journal`] and
//! [`tokens`] are the test controls; `routes`, `gateway` and `admin` are the
//! HTTP surface; `server` is the accept loop that can drop a connection on
//! purpose.

mod admin;
pub mod device;
pub mod faults;
mod gateway;
pub mod journal;
pub mod listing;
pub mod rejection;
mod routes;
pub mod rules;
mod server;
pub mod store;
pub mod tokens;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use faults::{FaultAction, FaultRule, FaultRuleError, parse_fault_rules};
pub use journal::{JournalEntry, Outcome};
pub use rejection::Rejection;

use faults::FaultBook;
use journal::Journal;
use store::{Mint, ReferralStore, SystemMint};
use tokens::TokenBook;

/// How the emulator starts.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Referrals that already exist; missing ids, eTags and dates are
    /// generated.
    pub seed: Vec<Value>,
    /// Access tokens accepted from the start; they never expire on their
    /// own.
    pub access_tokens: Vec<String>,
    /// Refresh tokens the token endpoint accepts.
    pub refresh_tokens: Vec<String>,
    /// How long an access token issued by the token endpoint lasts.
    pub token_lifetime: Duration,
    pub faults: Vec<FaultRule>,
    /// Added before handling every API and token request.
    pub latency: Duration,
    /// How many journal entries to keep; older ones are dropped.
    pub journal_limit: usize,
    /// How long a device code of the device-code sign-in stays valid.
    pub device_code_lifetime: Duration,
    /// The polling interval the device-code endpoint asks for.
    pub device_code_interval: Duration,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            seed: Vec::new(),
            access_tokens: Vec::new(),
            refresh_tokens: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            faults: Vec::new(),
            latency: Duration::ZERO,
            journal_limit: 100_000,
            device_code_lifetime: Duration::from_secs(900),
            device_code_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Error)]
pub enum EmulatorError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: a seed must be an array of referrals or an object with a \"value\" array")]
    SeedShape { path: PathBuf },
    #[error("seed referral {index}{}: {reason}", id.as_ref().map(|id| format!(" (id {id})")).unwrap_or_default())]
    SeedReferral {
        index: usize,
        id: Option<String>,
        reason: Rejection,
    },
    #[error("{path}: {source}")]
    Faults {
        path: PathBuf,
        source: FaultRuleError,
    },
    #[error("cannot serve on the listener: {0}")]
    Listener(std::io::Error),
}

/// Read a seed file: an array of referral documents, or `{"value": [...]}`
/// (the shape of a list page and of `GET /_admin/referrals`).
pub fn load_seed(path: &Path) -> Result<Vec<Value>, EmulatorError> {
    match read_json(path)? {
        Value::Array(referrals) => Ok(referrals),
        Value::Object(mut object) => match object.remove("value") {
            Some(Value::Array(referrals)) => Ok(referrals),
            _ => Err(EmulatorError::SeedShape {
                path: path.to_owned(),
            }),
        },
        _ => Err(EmulatorError::SeedShape {
            path: path.to_owned(),
        }),
    }
}

/// Read a fault rules file (see [`faults`] for the format).
pub fn load_faults(path: &Path) -> Result<Vec<FaultRule>, EmulatorError> {
    parse_fault_rules(&read_json(path)?).map_err(|source| EmulatorError::Faults {
        path: path.to_owned(),
        source,
    })
}

fn read_json(path: &Path) -> Result<Value, EmulatorError> {
    let text = std::fs::read_to_string(path).map_err(|source| EmulatorError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| EmulatorError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Serve until `shutdown` completes (or `POST /_admin/shutdown`), then
/// let open connections finish their current request.
pub async fn run(
    options: EmulatorOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EmulatorError> {
    Emulator::new(options)?.serve(listener, shutdown).await
}

/// A seeded emulator, ready to serve. Building it first lets a caller
/// report a bad seed before it binds or announces anything.
pub struct Emulator {
    state: Arc<EmulatorState>,
}

impl Emulator {
    pub fn new(options: EmulatorOptions) -> Result<Emulator, EmulatorError> {
        Ok(Emulator {
            state: Arc::new(EmulatorState::new(options)?),
        })
    }

    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), EmulatorError> {
        let stop_requested = self.state.stop.subscribe();
        let router = routes::router(self.state);
        server::serve(listener, router, stop_requested, shutdown)
            .await
            .map_err(EmulatorError::Listener)
    }
}

/// Everything the handlers share.
pub(crate) struct EmulatorState {
    referrals: Mutex<ReferralStore>,
    mint: Mutex<SystemMint>,
    journal: Mutex<Journal>,
    faults: Mutex<FaultBook>,
    tokens: Mutex<TokenBook>,
    device_codes: Mutex<device::DeviceCodes>,
    latency: Duration,
    /// Set by `POST /_admin/shutdown`.
    stop: watch::Sender<bool>,
}

impl EmulatorState {
    fn new(options: EmulatorOptions) -> Result<Self, EmulatorError> {
        let mut referrals = ReferralStore::new();
        let mut mint = SystemMint::default();
        for (index, document) in options.seed.into_iter().enumerate() {
            let id = document
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            referrals
                .insert(document, &mut mint)
                .map_err(|reason| EmulatorError::SeedReferral { index, id, reason })?;
        }
        Ok(EmulatorState {
            referrals: Mutex::new(referrals),
            mint: Mutex::new(mint),
            journal: Mutex::new(Journal::new(options.journal_limit)),
            faults: Mutex::new(FaultBook::new(options.faults)),
            tokens: Mutex::new(TokenBook::new(
                &options.access_tokens,
                &options.refresh_tokens,
                options.token_lifetime,
            )),
            device_codes: Mutex::new(device::DeviceCodes::new(
                options.device_code_lifetime,
                options.device_code_interval,
            )),
            latency: options.latency,
            stop: watch::Sender::new(false),
        })
    }

    /// Run a write against the store with the shared mint.
    fn write<T>(&self, write: impl FnOnce(&mut ReferralStore, &mut dyn Mint) -> T) -> T {
        let mut referrals = lock(&self.referrals);
        let mut mint = lock(&self.mint);
        write(&mut referrals, &mut *mint)
    }
}

/// Every write validates on a copy before it replaces anything, so state
/// behind a poisoned lock is still consistent and safe to keep using.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seeds_load_as_an_array_or_a_value_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let array = dir.path().join("array.json");
        std::fs::write(&array, r#"[{"id": "a"}]"#).unwrap();
        let envelope = dir.path().join("envelope.json");
        std::fs::write(&envelope, r#"{"value": [{"id": "a"}, {"id": "b"}]}"#).unwrap();
        assert_eq!(load_seed(&array).unwrap().len(), 1);
        assert_eq!(load_seed(&envelope).unwrap().len(), 2);

        let scalar = dir.path().join("scalar.json");
        std::fs::write(&scalar, "3").unwrap();
        assert!(load_seed(&scalar).unwrap_err().to_string().ends_with(
            "scalar.json: a seed must be an array of referrals or an object with a \"value\" array"
        ));
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "[\n{\"id\": }]").unwrap();
        let message = load_seed(&broken).unwrap_err().to_string();
        assert!(
            message.contains("broken.json is not valid JSON"),
            "{message}"
        );
        assert!(message.contains("line 2 column 8"), "{message}");
        let missing = dir.path().join("missing.json");
        assert!(
            load_seed(&missing)
                .unwrap_err()
                .to_string()
                .starts_with("cannot read")
        );
    }

    #[test]
    fn fault_files_name_the_file_and_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults.json");
        std::fs::write(&path, r#"[{"kind": "reset_before"}, {"kind": "delay"}]"#).unwrap();
        let message = load_faults(&path).unwrap_err().to_string();
        assert!(
            message.ends_with("faults.json: fault rule 1: kind delay needs ms"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_seed_referral_is_named_by_index_and_id() {
        let options = EmulatorOptions {
            seed: vec![json!({"id": "a"}), json!({"id": "a"})],
            ..EmulatorOptions::default()
        };
        let error = Emulator::new(options).err().unwrap();
        assert_eq!(
            error.to_string(),
            "seed referral 1 (id a): a referral with id a already exists"
        );
    }
}
