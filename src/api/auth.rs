//! Bearer tokens: a token file re-read when it changes, or the OAuth2
//! refresh-token flow with the rotated refresh token written back.
//!
//! Secrets (access tokens, refresh tokens, client secrets) live in
//! [`SecretString`]s and never reach a log line, an error message or a
//! `Debug` output: errors from the token endpoint carry the HTTP status and
//! the OAuth `error`/`error_description` fields only, never the raw body.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The resource (audience) of Partner Center tokens.
pub const DEFAULT_RESOURCE: &str = "https://api.partner.microsoft.com";

/// Whether `token_url` is an Entra ID v2 endpoint (`…/oauth2/v2.0/token`),
/// which takes a `scope`; a v1 endpoint (`…/oauth2/token`) takes a
/// `resource`.
pub fn is_v2_endpoint(token_url: &str) -> bool {
    token_url.contains("/oauth2/v2.0/")
}

/// The v2 scope for `resource`: its default permissions, and a refresh
/// token (`offline_access`).
pub fn v2_scope(resource: &str) -> String {
    format!("{}/.default offline_access", resource.trim_end_matches('/'))
}

/// An access token is replaced this long before it expires, so that a
/// request never leaves with a token about to die in flight.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The lifetime assumed when the token endpoint states none: the
/// documented hour of Entra ID access tokens.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);

/// `error_description` can be long (Entra appends trace ids); keep the head.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// Where bearer tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOptions {
    /// A pre-issued access token in a file, re-read whenever the file
    /// changes (an external process renews it).
    TokenFile { path: PathBuf },
    /// The OAuth2 refresh-token grant against an Entra ID token endpoint,
    /// v1 (`resource`) or v2 (`scope`, see [`is_v2_endpoint`]); a rotated
    /// refresh token is written back to its file.
    RefreshToken {
        /// Full URL, see [`AuthOptions::default_token_url`].
        token_url: String,
        client_id: String,
        /// Confidential clients only; public clients send no secret.
        client_secret_file: Option<PathBuf>,
        refresh_token_file: PathBuf,
        /// Usually [`DEFAULT_RESOURCE`].
        resource: String,
    },
}

impl AuthOptions {
    /// The public-cloud v1 token endpoint of `tenant`.
    pub fn default_token_url(tenant: &str) -> String {
        format!("https://login.microsoftonline.com/{tenant}/oauth2/token")
    }
}

/// Which secret file an error or a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFile {
    Token,
    RefreshToken,
    ClientSecret,
}

impl SecretFile {
    /// The configuration key naming this file.
    pub fn key(self) -> &'static str {
        match self {
            SecretFile::Token => "auth.token_file",
            SecretFile::RefreshToken => "auth.refresh_token_file",
            SecretFile::ClientSecret => "auth.client_secret_file",
        }
    }

    /// Tokens travel in a header or a form as they are: one line of
    /// printable ASCII. A client secret is form-encoded, so anything goes.
    fn must_be_one_line(self) -> bool {
        matches!(self, SecretFile::Token | SecretFile::RefreshToken)
    }
}

/// Where `secret` (already trimmed) stops being one line of printable
/// ASCII, by position only: the secret itself never reaches a message.
fn one_line_problem(secret: &str) -> Option<String> {
    let lines = secret.lines().count();
    if lines > 1 {
        return Some(format!("it has {lines} lines"));
    }
    let (offset, byte) = secret
        .bytes()
        .enumerate()
        .find(|(_, byte)| !byte.is_ascii_graphic())?;
    let what = match byte {
        b' ' => "a space".to_owned(),
        byte if byte.is_ascii_control() => format!("control byte 0x{byte:02x}"),
        byte => format!("non-ASCII byte 0x{byte:02x}"),
    };
    Some(format!("{what} at byte {}", offset + 1))
}

impl fmt::Display for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretFile::Token => "token file",
            SecretFile::RefreshToken => "refresh token file",
            SecretFile::ClientSecret => "client secret file",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the {kind} {}: {error}", path.display())]
    Read {
        kind: SecretFile,
        path: PathBuf,
        error: io::Error,
    },
    #[error("the {kind} {} is empty", path.display())]
    Empty { kind: SecretFile, path: PathBuf },
    /// A token that cannot be sent in a header (or a form) as it is: more
    /// than one line, a control byte, a space, a non-ASCII byte. The
    /// message says where, never what.
    #[error(
        "the {kind} {} is not one line of printable ASCII: {problem} (one line is expected; a trailing newline is allowed)",
        path.display()
    )]
    NotOneLine {
        kind: SecretFile,
        path: PathBuf,
        problem: String,
    },
    #[error("token endpoint {url} is unreachable: {reason}")]
    Transport { url: String, reason: String },
    #[error(
        "token endpoint {url} refused the refresh token grant with HTTP {status}{}",
        oauth_detail(error.as_deref(), description.as_deref())
    )]
    Refused {
        url: String,
        status: u16,
        /// The OAuth `error` code, e.g. `invalid_grant`.
        error: Option<String>,
        /// The OAuth `error_description`, truncated.
        description: Option<String>,
    },
    #[error("token endpoint {url} answered HTTP {status} without a usable token: {reason}")]
    InvalidResponse {
        url: String,
        status: u16,
        reason: &'static str,
    },
}

fn oauth_detail(error: Option<&str>, description: Option<&str>) -> String {
    match (error, description) {
        (Some(error), Some(description)) => format!(": {error}: {description}"),
        (Some(error), None) => format!(": {error}"),
        (None, Some(description)) => format!(": {description}"),
        (None, None) => " (no OAuth error in the body)".to_owned(),
    }
}

/// Hands out bearer tokens to every worker. Cheap to share behind an `Arc`;
/// concurrent callers wait for one refresh instead of starting their own.
pub struct TokenProvider {
    options: AuthOptions,
    http: reqwest::Client,
    state: Mutex<State>,
    exchanges: AtomicU64,
}

#[derive(Default)]
struct State {
    access: Option<AccessToken>,
    refresh: Option<RememberedRefreshToken>,
}

struct AccessToken {
    bearer: SecretString,
    valid: Validity,
}

enum Validity {
    /// A token file's token: good until the file changes.
    UntilFileChanges(FileStamp),
    /// A granted token: good until this instant (the margin already taken).
    Until(Instant),
}

/// The refresh token in use, and the state of its file when it was read or
/// written. The file wins as soon as it changes (an operator replaced it);
/// until then memory is used, which also covers a failed write-back.
struct RememberedRefreshToken {
    secret: SecretString,
    file_stamp: Option<FileStamp>,
}

/// Enough of a file's metadata to notice that it was rewritten or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(metadata),
        }
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("options", &self.options)
            .field("exchanges", &self.exchanges())
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    pub fn new(options: AuthOptions, http: reqwest::Client) -> Self {
        TokenProvider {
            options,
            http,
            state: Mutex::new(State::default()),
            exchanges: AtomicU64::new(0),
        }
    }

    pub fn options(&self) -> &AuthOptions {
        &self.options
    }

    /// Successful refresh-token exchanges so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// A bearer token valid for at least [`REFRESH_MARGIN`] (refresh flow)
    /// or the current content of the token file.
    pub async fn bearer(&self) -> Result<SecretString, AuthError> {
        let mut state = self.state.lock().await;
        match &self.options {
            AuthOptions::TokenFile { path } => bearer_from_file(&mut state, path).await,
            AuthOptions::RefreshToken { .. } => {
                if let Some(AccessToken {
                    bearer,
                    valid: Validity::Until(until),
                }) = &state.access
                    && Instant::now() < *until
                {
                    return Ok(bearer.clone());
                }
                self.exchange(&mut state).await
            }
        }
    }

    /// Forget the cached token (the service answered 401): the next
    /// [`TokenProvider::bearer`] re-reads the file or refreshes.
    pub async fn invalidate(&self) {
        self.state.lock().await.access = None;
    }

    /// Forget the cached token only if it is still `rejected`. When many
    /// workers see a 401 for the same token, the first one refreshes and the
    /// others keep the fresh token instead of refreshing again.
    pub async fn invalidate_rejected(&self, rejected: &SecretString) {
        let mut state = self.state.lock().await;
        if state
            .access
            .as_ref()
            .is_some_and(|access| access.bearer.expose_secret() == rejected.expose_secret())
        {
            state.access = None;
        }
    }

    async fn exchange(&self, state: &mut State) -> Result<SecretString, AuthError> {
        let AuthOptions::RefreshToken {
            token_url,
            client_id,
            client_secret_file,
            refresh_token_file,
            resource,
        } = &self.options
        else {
            unreachable!("exchange is only called for the refresh-token flow");
        };
        let refresh_token = current_refresh_token(&mut state.refresh, refresh_token_file).await?;
        let client_secret = match client_secret_file {
            Some(path) => Some(read_secret(SecretFile::ClientSecret, path).await?),
            None => None,
        };
        let scope = v2_scope(resource);
        let audience = if is_v2_endpoint(token_url) {
            ("scope", scope.as_str())
        } else {
            ("resource", resource.as_str())
        };
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", client_id.as_str()),
            ("refresh_token", refresh_token.expose_secret()),
            audience,
        ];
        if let Some(secret) = &client_secret {
            form.push(("client_secret", secret.expose_secret()));
        }

        let requested_at = Instant::now();
        let grant = self.request_grant(token_url, &form).await?;
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            valid_seconds = grant.lifetime.as_secs(),
            "access token refreshed, valid for {} s",
            grant.lifetime.as_secs()
        );
        if let Some(rotated) = grant.refresh_token
            && rotated.expose_secret() != refresh_token.expose_secret()
        {
            remember_rotated(state, refresh_token_file, rotated).await;
        }
        state.access = Some(AccessToken {
            bearer: grant.access_token.clone(),
            valid: Validity::Until(requested_at + refresh_deadline(grant.lifetime)),
        });
        Ok(grant.access_token)
    }

    /// POST the refresh-token grant `form` to `token_url` and read the
    /// grant from the answer.
    async fn request_grant(
        &self,
        token_url: &str,
        form: &[(&str, &str)],
    ) -> Result<TokenGrant, AuthError> {
        let transport = |error: reqwest::Error| AuthError::Transport {
            url: token_url.to_owned(),
            reason: error_chain(&error),
        };
        let response = self
            .http
            .post(token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let (error, description) = oauth_error(&body);
            return Err(AuthError::Refused {
                url: token_url.to_owned(),
                status: status.as_u16(),
                error,
                description,
            });
        }
        parse_grant(&body, unix_now()).map_err(|reason| AuthError::InvalidResponse {
            url: token_url.to_owned(),
            status: status.as_u16(),
            reason,
        })
    }
}

/// The token endpoint rotated the refresh token: write it back, and keep
/// it with the stamp of the file it now lives in.
async fn remember_rotated(state: &mut State, refresh_token_file: &Path, rotated: SecretString) {
    store_refresh_token(refresh_token_file, &rotated).await;
    state.refresh = Some(RememberedRefreshToken {
        secret: rotated,
        file_stamp: file_stamp(refresh_token_file).await.ok(),
    });
}

async fn bearer_from_file(state: &mut State, path: &Path) -> Result<SecretString, AuthError> {
    let stamp = file_stamp(path).await.map_err(|error| AuthError::Read {
        kind: SecretFile::Token,
        path: path.to_owned(),
        error,
    })?;
    if let Some(AccessToken {
        bearer,
        valid: Validity::UntilFileChanges(cached_stamp),
    }) = &state.access
        && *cached_stamp == stamp
    {
        return Ok(bearer.clone());
    }
    let bearer = read_secret(SecretFile::Token, path).await?;
    tracing::debug!(file = %path.display(), "read the bearer token from the token file");
    state.access = Some(AccessToken {
        bearer: bearer.clone(),
        valid: Validity::UntilFileChanges(stamp),
    });
    Ok(bearer)
}

async fn current_refresh_token(
    remembered: &mut Option<RememberedRefreshToken>,
    path: &Path,
) -> Result<SecretString, AuthError> {
    let stamp = file_stamp(path).await.ok();
    if let Some(remembered) = remembered
        && remembered.file_stamp == stamp
    {
        return Ok(remembered.secret.clone());
    }
    let secret = read_secret(SecretFile::RefreshToken, path).await?;
    *remembered = Some(RememberedRefreshToken {
        secret: secret.clone(),
        file_stamp: stamp,
    });
    Ok(secret)
}

async fn file_stamp(path: &Path) -> io::Result<FileStamp> {
    tokio::fs::metadata(path)
        .await
        .map(|metadata| FileStamp::of(&metadata))
}

/// Read a secret file: trimmed, never empty, with a warning when other
/// users could read it.
async fn read_secret(kind: SecretFile, path: &Path) -> Result<SecretString, AuthError> {
    let read_error = |error| AuthError::Read {
        kind,
        path: path.to_owned(),
        error,
    };
    let mut content = tokio::fs::read_to_string(path).await.map_err(read_error)?;
    let secret = SecretString::from(content.trim());
    content.zeroize();
    if secret.expose_secret().is_empty() {
        return Err(AuthError::Empty {
            kind,
            path: path.to_owned(),
        });
    }
    if kind.must_be_one_line()
        && let Some(problem) = one_line_problem(secret.expose_secret())
    {
        return Err(AuthError::NotOneLine {
            kind,
            path: path.to_owned(),
            problem,
        });
    }
    if let Ok(metadata) = tokio::fs::metadata(path).await {
        warn_if_exposed(kind, path, &metadata);
    }
    Ok(secret)
}

/// Read a secret file now, as [`TokenProvider`] does (trimmed, not empty,
/// one line for a token), for a command that needs it once.
pub fn read_secret_file(kind: SecretFile, path: &Path) -> Result<SecretString, AuthError> {
    check_secret_file(kind, path)?;
    let mut content = std::fs::read_to_string(path).map_err(|error| AuthError::Read {
        kind,
        path: path.to_owned(),
        error,
    })?;
    let secret = SecretString::from(content.trim());
    content.zeroize();
    Ok(secret)
}

/// Read a secret file as [`TokenProvider`] will, without keeping the
/// secret, so that `check` and a start-up check find what a cycle would
/// only find request by request. `Ok(Some(mode))` when group or others can
/// access the file.
pub fn check_secret_file(kind: SecretFile, path: &Path) -> Result<Option<u32>, AuthError> {
    let read_error = |error| AuthError::Read {
        kind,
        path: path.to_owned(),
        error,
    };
    let mut content = std::fs::read_to_string(path).map_err(read_error)?;
    let trimmed = content.trim();
    let empty = trimmed.is_empty();
    let problem = if kind.must_be_one_line() {
        one_line_problem(trimmed)
    } else {
        None
    };
    content.zeroize();
    if empty {
        return Err(AuthError::Empty {
            kind,
            path: path.to_owned(),
        });
    }
    if let Some(problem) = problem {
        return Err(AuthError::NotOneLine {
            kind,
            path: path.to_owned(),
            problem,
        });
    }
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    Ok(exposed_mode(&metadata))
}

/// The permission bits when group or others have any access.
#[cfg(unix)]
fn exposed_mode(metadata: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn exposed_mode(_metadata: &std::fs::Metadata) -> Option<u32> {
    None
}

fn warn_if_exposed(kind: SecretFile, path: &Path, metadata: &std::fs::Metadata) {
    if let Some(mode) = exposed_mode(metadata) {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{mode:o}"),
            "the {kind} {} is accessible by group or others (mode {mode:o}); restrict it with chmod 600",
            path.display()
        );
    }
}

/// Write the rotated refresh token back. A failure is logged, not returned:
/// the token is kept in memory and the daemon keeps working; the next
/// rotation tries again.
async fn store_refresh_token(path: &Path, secret: &SecretString) {
    let owned_path = path.to_owned();
    let owned_secret = secret.clone();
    let written = tokio::task::spawn_blocking(move || {
        write_secret_atomically(&owned_path, owned_secret.expose_secret())
    })
    .await
    .unwrap_or_else(|join_error| Err(io::Error::other(join_error.to_string())));
    match written {
        Ok(()) => tracing::info!(file = %path.display(), "stored the rotated refresh token"),
        Err(error) => tracing::error!(
            file = %path.display(),
            %error,
            "cannot store the rotated refresh token in {}: {error}; keeping it in memory",
            path.display()
        ),
    }
}

/// Replace `path` with `secret` so that a crash leaves either the old or
/// the new file, never a torn one: a private temporary file (mode 0600) in
/// the same directory, fsync, rename, fsync of the directory. A symlink is
/// followed so that the file it points to is the one replaced.
pub fn write_secret_atomically(path: &Path, secret: &str) -> io::Result<()> {
    let target = match std::fs::canonicalize(path) {
        Ok(target) => target,
        Err(error) if error.kind() == io::ErrorKind::NotFound => path.to_owned(),
        Err(error) => return Err(error),
    };
    let directory = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let temporary = directory.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));

    let written = (|| {
        let mut file = create_private(&temporary)?;
        file.write_all(secret.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)?;
        sync_directory(&directory)
    })();
    if written.is_err() {
        // Nothing to clean up when the rename happened; otherwise do not
        // leave a copy of the secret behind.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(unix)]
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn sync_directory(directory: &Path) -> io::Result<()> {
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> io::Result<()> {
    Ok(())
}

/// What a successful token response grants.
struct TokenGrant {
    access_token: SecretString,
    lifetime: Duration,
    refresh_token: Option<SecretString>,
}

/// Read a token response. The v1 endpoint sends numbers as strings
/// (`"expires_in": "3599"`), so both forms are accepted. The reasons are
/// fixed texts: nothing from the body can leak into an error.
fn parse_grant(body: &[u8], now_unix: u64) -> Result<TokenGrant, &'static str> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return Err("the body is not a JSON object");
    };
    if let Some(token_type) = fields.get("token_type")
        && !token_type
            .as_str()
            .is_some_and(|kind| kind.eq_ignore_ascii_case("bearer"))
    {
        return Err("token_type is not Bearer");
    }
    let access_token = match fields.remove("access_token") {
        Some(Value::String(token)) if !token.trim().is_empty() => take_secret(token),
        _ => return Err("access_token is missing or empty"),
    };
    let lifetime = match (
        fields.get("expires_in").and_then(seconds),
        fields.get("expires_on").and_then(seconds),
    ) {
        (Some(expires_in), _) => Duration::from_secs(expires_in),
        (None, Some(expires_on)) => Duration::from_secs(expires_on.saturating_sub(now_unix)),
        (None, None) => ASSUMED_LIFETIME,
    };
    let refresh_token = match fields.remove("refresh_token") {
        Some(Value::String(token)) if !token.trim().is_empty() => Some(take_secret(token)),
        _ => None,
    };
    Ok(TokenGrant {
        access_token,
        lifetime,
        refresh_token,
    })
}

fn take_secret(mut token: String) -> SecretString {
    let secret = SecretString::from(token.trim());
    token.zeroize();
    secret
}

/// A non-negative whole number of seconds, as a JSON number or string.
fn seconds(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// The `error` and `error_description` of an OAuth error body, and nothing
/// else from it.
fn oauth_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .map(|text| crate::api::cut_text(text.trim(), MAX_DESCRIPTION_CHARS))
    };
    (text("error"), text("error_description"))
}

/// How long a token of `lifetime` is used: until [`REFRESH_MARGIN`] before
/// it expires, or half its life when it is too short for that margin.
fn refresh_deadline(lifetime: Duration) -> Duration {
    if lifetime > REFRESH_MARGIN * 2 {
        lifetime - REFRESH_MARGIN
    } else {
        lifetime / 2
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// An error and its causes on one line: reqwest's own message names only
/// the URL, the reason (refused, reset, timed out) is in the sources.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex as StdMutex};

    use axum::Form;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;
    use crate::api::test_support::{LogCapture, serve};

    const REFRESH_TOKEN: &str = "rt-1-very-secret-refresh";
    const CLIENT_SECRET: &str = "cs-very-secret-client";

    type Responder = dyn Fn(usize, &HashMap<String, String>) -> (StatusCode, String) + Send + Sync;

    /// A token endpoint that records every form it receives and answers
    /// with `respond(call number from 1, form)` after `delay`.
    struct TokenEndpoint {
        url: String,
        forms: Arc<StdMutex<Vec<HashMap<String, String>>>>,
    }

    impl TokenEndpoint {
        async fn start(delay: Duration, respond: Arc<Responder>) -> Self {
            let forms = Arc::new(StdMutex::new(Vec::new()));
            let recorded = Arc::clone(&forms);
            let handler = move |Form(form): Form<HashMap<String, String>>| {
                let recorded = Arc::clone(&recorded);
                let respond = Arc::clone(&respond);
                async move {
                    let call = {
                        let mut forms = recorded.lock().unwrap();
                        forms.push(form.clone());
                        forms.len()
                    };
                    tokio::time::sleep(delay).await;
                    let (status, body) = respond(call, &form);
                    (
                        status,
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            };
            let address = serve(
                axum::Router::new()
                    .route("/tenant/oauth2/token", post(handler.clone()))
                    .route("/tenant/oauth2/v2.0/token", post(handler)),
            )
            .await;
            TokenEndpoint {
                url: format!("http://{address}/tenant/oauth2/token"),
                forms,
            }
        }

        fn calls(&self) -> usize {
            self.forms.lock().unwrap().len()
        }

        fn form(&self, call: usize) -> HashMap<String, String> {
            self.forms.lock().unwrap()[call - 1].clone()
        }
    }

    /// Grants `at-<call>` for `expires_in` seconds, rotating the refresh
    /// token to `rt-<call+1>-rotated` when `rotate` is set.
    fn granting(expires_in: &'static str, rotate: bool) -> Arc<Responder> {
        Arc::new(move |call, _| {
            let mut body = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": expires_in,
                "resource": DEFAULT_RESOURCE,
                "access_token": format!("at-{call}"),
            });
            if rotate {
                body["refresh_token"] = Value::from(format!("rt-{}-rotated", call + 1));
            }
            (StatusCode::OK, body.to_string())
        })
    }

    fn write_private(path: &Path, content: &str) {
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    struct Fixture {
        dir: tempfile::TempDir,
        provider: TokenProvider,
    }

    impl Fixture {
        fn refresh_token_file(&self) -> PathBuf {
            self.dir.path().join("refresh-token")
        }
    }

    fn refresh_flow(endpoint: &TokenEndpoint, with_secret: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        write_private(
            &dir.path().join("refresh-token"),
            &format!("{REFRESH_TOKEN}\n"),
        );
        write_private(&dir.path().join("client-secret"), CLIENT_SECRET);
        let options = AuthOptions::RefreshToken {
            token_url: endpoint.url.clone(),
            client_id: "client-app-id".into(),
            client_secret_file: with_secret.then(|| dir.path().join("client-secret")),
            refresh_token_file: dir.path().join("refresh-token"),
            resource: DEFAULT_RESOURCE.into(),
        };
        Fixture {
            provider: TokenProvider::new(options, reqwest::Client::new()),
            dir,
        }
    }

    async fn bearer(provider: &TokenProvider) -> String {
        provider.bearer().await.unwrap().expose_secret().to_owned()
    }

    #[tokio::test]
    async fn exchanges_the_refresh_token_and_caches_the_access_token() {
        let endpoint = TokenEndpoint::start(Duration::ZERO, granting("3599", false)).await;
        let fixture = refresh_flow(&endpoint, true);
        assert_eq!(bearer(&fixture.provider).await, "at-1");
        assert_eq!(bearer(&fixture.provider).await, "at-1");
        assert_eq!(endpoint.calls(), 1);
        assert_eq!(fixture.provider.exchanges(), 1);
        let form = endpoint.form(1);
        let expected: HashMap<String, String> = [
            ("grant_type", "refresh_token"),
            ("client_id", "client-app-id"),
            ("refresh_token", REFRESH_TOKEN),
            ("resource", DEFAULT_RESOURCE),
            ("client_secret", CLIENT_SECRET),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        assert_eq!(form, expected);
    }

    #[tokio::test]
    async fn a_v2_endpoint_gets_a_scope_instead_of_a_resource() {
        let endpoint = TokenEndpoint::start(Duration::ZERO, granting("3599", false)).await;
        let mut fixture = refresh_flow(&endpoint, false);
        if let AuthOptions::RefreshToken { token_url, .. } = &mut fixture.provider.options {
            *token_url = token_url.replace("/oauth2/token", "/oauth2/v2.0/token");
        }
        assert_eq!(bearer(&fixture.provider).await, "at-1");
        let form = endpoint.form(1);
        assert_eq!(
            form.get("scope").map(String::as_str),
            Some("https://api.partner.microsoft.com/.default offline_access")
        );
        assert!(!form.contains_key("resource"), "{form:?}");
        assert_eq!(form["grant_type"], "refresh_token");
        assert_eq!(
            v2_scope("https://api.partner.microsoft.com/"),
            "https://api.partner.microsoft.com/.default offline_access"
        );
        assert!(is_v2_endpoint(
            "https://login.microsoftonline.com/t/oauth2/v2.0/token"
        ));
        assert!(!is_v2_endpoint(
            "https://login.microsoftonline.com/t/oauth2/token"
        ));
    }

    #[tokio::test]
    async fn a_public_client_sends_no_client_secret() {
        let endpoint = TokenEndpoint::start(Duration::ZERO, granting("3599", false)).await;
        let fixture = refresh_flow(&endpoint, false);
        bearer(&fixture.provider).await;
        assert!(!endpoint.form(1).contains_key("client_secret"));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_refresh() {
        let endpoint =
            TokenEndpoint::start(Duration::from_millis(100), granting("3599", false)).await;
        let fixture = refresh_flow(&endpoint, true);
        let provider = &fixture.provider;
        let tokens = futures_util::future::join_all((0..10).map(|_| bearer(provider))).await;
        assert_eq!(tokens, vec!["at-1"; 10]);
        assert_eq!(endpoint.calls(), 1);
    }

    #[tokio::test]
    async fn an_expired_access_token_is_refreshed() {
        // expires_on in the past (a number), then expires_in 0 (a string):
        // both are stale at once, so every call refreshes.
        let responder: Arc<Responder> = Arc::new(|call, _| {
            let body = if call == 1 {
                serde_json::json!({"access_token": "at-1", "expires_on": unix_now() - 10})
            } else {
                serde_json::json!({"access_token": format!("at-{call}"), "expires_in": "0"})
            };
            (StatusCode::OK, body.to_string())
        });
        let endpoint = TokenEndpoint::start(Duration::ZERO, responder).await;
        let fixture = refresh_flow(&endpoint, true);
        assert_eq!(bearer(&fixture.provider).await, "at-1");
        assert_eq!(bearer(&fixture.provider).await, "at-2");
        assert_eq!(bearer(&fixture.provider).await, "at-3");
        assert_eq!(endpoint.calls(), 3);
    }

    #[tokio::test]
    async fn a_rotated_refresh_token_is_written_back_with_mode_0600() {
        let endpoint = TokenEndpoint::start(Duration::ZERO, granting("3599", true)).await;
        let fixture = refresh_flow(&endpoint, true);
        let path = fixture.refresh_token_file();
        // Group-readable before: the rewrite must not inherit that.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();

        assert_eq!(bearer(&fixture.provider).await, "at-1");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "rt-2-rotated\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        let leftovers: Vec<_> = std::fs::read_dir(fixture.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // The next exchange presents the rotated token.
        fixture.provider.invalidate().await;
        assert_eq!(bearer(&fixture.provider).await, "at-2");
        assert_eq!(endpoint.form(2)["refresh_token"], "rt-2-rotated");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "rt-3-rotated\n");
    }

    #[tokio::test]
    async fn a_rotated_refresh_token_is_kept_in_memory_when_it_cannot_be_written() {
        let endpoint = TokenEndpoint::start(Duration::ZERO, granting("3599", true)).await;
        let mut fixture = refresh_flow(&endpoint, true);
        // A name the file system accepts but whose temporary sibling is too
        // long for it: the write-back fails even for root.
        let path = fixture.dir.path().join("r".repeat(240));
        write_private(&path, REFRESH_TOKEN);
        if let AuthOptions::RefreshToken {
            refresh_token_file, ..
        } = &mut fixture.provider.options
        {
            *refresh_token_file = path.clone();
        }
        let logs = LogCapture::start();

        assert_eq!(bearer(&fixture.provider).await, "at-1");
        fixture.provider.invalidate().await;
        assert_eq!(bearer(&fixture.provider).await, "at-2");

        assert_eq!(std::fs::read_to_string(&path).unwrap(), REFRESH_TOKEN);
        assert_eq!(endpoint.form(2)["refresh_token"], "rt-2-rotated");
        let logs = logs.text();
        assert!(
            logs.contains(&format!(
                "cannot store the rotated refresh token in {}",
                path.display()
            )),
            "{logs}"
        );
        assert_no_secret(&logs);
        assert!(!logs.contains("rt-2-rotated"), "{logs}");
        assert!(!logs.contains("rt-3-rotated"), "{logs}");
    }

    #[tokio::test]
    async fn a_replaced_refresh_token_file_wins_over_memory() {
        let endpoint = TokenEndpoint::start(Duration::ZERO, granting("3599", true)).await;
        let fixture = refresh_flow(&endpoint, true);
        bearer(&fixture.provider).await;
        write_private(&fixture.refresh_token_file(), "rt-from-operator-longer\n");
        fixture.provider.invalidate().await;
        bearer(&fixture.provider).await;
        assert_eq!(endpoint.form(2)["refresh_token"], "rt-from-operator-longer");
    }

    #[tokio::test]
    async fn invalidating_a_stale_token_keeps_the_fresh_one() {
        let endpoint = TokenEndpoint::start(Duration::ZERO, granting("3599", false)).await;
        let fixture = refresh_flow(&endpoint, true);
        let first = fixture.provider.bearer().await.unwrap();
        fixture.provider.invalidate_rejected(&first).await;
        assert_eq!(bearer(&fixture.provider).await, "at-2");
        // A second worker reports the same rejected token: no new exchange.
        fixture.provider.invalidate_rejected(&first).await;
        assert_eq!(bearer(&fixture.provider).await, "at-2");
        assert_eq!(endpoint.calls(), 2);
    }

    #[tokio::test]
    async fn the_token_file_is_reloaded_after_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_private(&path, "  token-a\n");
        let provider = TokenProvider::new(
            AuthOptions::TokenFile { path: path.clone() },
            reqwest::Client::new(),
        );
        assert_eq!(bearer(&provider).await, "token-a");
        // Replaced by rename, as renewal scripts do (new inode, new length).
        let replacement = dir.path().join("token.new");
        write_private(&replacement, "token-bb\n");
        std::fs::rename(&replacement, &path).unwrap();
        assert_eq!(bearer(&provider).await, "token-bb");
        // Rewritten in place.
        write_private(&path, "token-ccc");
        assert_eq!(bearer(&provider).await, "token-ccc");
        provider.invalidate().await;
        assert_eq!(bearer(&provider).await, "token-ccc");
    }

    #[tokio::test]
    async fn token_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let provider = TokenProvider::new(
            AuthOptions::TokenFile { path: path.clone() },
            reqwest::Client::new(),
        );
        let missing = provider.bearer().await.unwrap_err().to_string();
        assert!(
            missing.starts_with(&format!("cannot read the token file {}: ", path.display())),
            "{missing}"
        );
        write_private(&path, " \n");
        let empty = provider.bearer().await.unwrap_err().to_string();
        assert_eq!(empty, format!("the token file {} is empty", path.display()));
    }

    /// The secrets of a fixture, plus what the endpoint echoes back.
    const SECRETS: [&str; 3] = [REFRESH_TOKEN, CLIENT_SECRET, "at-leaked"];

    fn assert_no_secret(text: &str) {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} leaked into: {text}");
        }
    }

    #[tokio::test]
    async fn a_refused_refresh_reports_status_and_oauth_error_only() {
        // A hostile endpoint echoing every secret it received, in a JSON
        // error and in a non-JSON body.
        let echo = |form: &HashMap<String, String>| {
            format!(
                "{} {} at-leaked",
                form["refresh_token"], form["client_secret"]
            )
        };
        let cases: Vec<(Arc<Responder>, &str)> = vec![
            (
                Arc::new(move |_, form| {
                    let body = serde_json::json!({
                        "error": "invalid_grant",
                        "error_description": "AADSTS70008: The refresh token has expired.",
                        "echo": echo(form),
                    });
                    (StatusCode::BAD_REQUEST, body.to_string())
                }),
                "refused the refresh token grant with HTTP 400: invalid_grant: AADSTS70008: The refresh token has expired.",
            ),
            (
                Arc::new(move |_, form| (StatusCode::UNAUTHORIZED, echo(form))),
                "refused the refresh token grant with HTTP 401 (no OAuth error in the body)",
            ),
            (
                Arc::new(move |_, form| {
                    let body = serde_json::json!({"token_type": "Bearer", "echo": echo(form)});
                    (StatusCode::OK, body.to_string())
                }),
                "answered HTTP 200 without a usable token: access_token is missing or empty",
            ),
            (
                Arc::new(move |_, form| (StatusCode::OK, echo(form))),
                "answered HTTP 200 without a usable token: the body is not a JSON object",
            ),
        ];
        for (responder, fragment) in cases {
            let endpoint = TokenEndpoint::start(Duration::ZERO, responder).await;
            let fixture = refresh_flow(&endpoint, true);
            let logs = LogCapture::start();
            let error = fixture.provider.bearer().await.unwrap_err();
            let display = format!("{error}");
            assert!(
                display.starts_with(&format!("token endpoint {} ", endpoint.url)),
                "{display}"
            );
            assert!(display.contains(fragment), "{display}");
            assert_no_secret(&display);
            assert_no_secret(&format!("{error:?}"));
            assert_no_secret(&logs.text());
        }
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        drop(listener);
        let endpoint = TokenEndpoint {
            url: url.clone(),
            forms: Default::default(),
        };
        let fixture = refresh_flow(&endpoint, true);
        let error = fixture.provider.bearer().await.unwrap_err();
        assert!(matches!(error, AuthError::Transport { .. }), "{error:?}");
        let display = error.to_string();
        assert!(
            display.starts_with(&format!("token endpoint {url} is unreachable: ")),
            "{display}"
        );
        assert_no_secret(&display);
    }

    #[tokio::test]
    async fn secret_files_open_to_others_are_warned_about_by_name() {
        let endpoint = TokenEndpoint::start(Duration::ZERO, granting("3599", false)).await;
        let fixture = refresh_flow(&endpoint, true);
        let client_secret = fixture.dir.path().join("client-secret");
        std::fs::set_permissions(&client_secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let logs = LogCapture::start();
        bearer(&fixture.provider).await;
        let logs = logs.text();
        let warnings: Vec<&str> = logs.lines().filter(|line| line.contains("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{logs}");
        assert!(
            warnings[0].contains(&format!(
                "the client secret file {} is accessible by group or others (mode 644)",
                client_secret.display()
            )),
            "{logs}"
        );
        assert_no_secret(&logs);
    }

    #[tokio::test]
    async fn nothing_secret_in_logs_or_debug_output() {
        let responder: Arc<Responder> = Arc::new(|_, _| {
            let body = serde_json::json!({
                "access_token": "at-leaked",
                "expires_in": 3599,
                "refresh_token": "rt-rotated-secret",
            });
            (StatusCode::OK, body.to_string())
        });
        let endpoint = TokenEndpoint::start(Duration::ZERO, responder).await;
        let fixture = refresh_flow(&endpoint, true);
        let logs = LogCapture::start();
        assert_eq!(bearer(&fixture.provider).await, "at-leaked");
        let text = format!("{}\n{:?}", logs.text(), fixture.provider);
        assert!(
            text.contains("access token refreshed, valid for 3599 s"),
            "{text}"
        );
        assert!(text.contains("stored the rotated refresh token"), "{text}");
        assert_no_secret(&text);
        assert!(!text.contains("rt-rotated-secret"), "{text}");
    }

    #[test]
    fn grants_are_parsed_in_both_number_forms() {
        let now = 1_700_000_000;
        let cases = [
            (r#"{"access_token":"a","expires_in":"3599"}"#, 3599, false),
            (r#"{"access_token":"a","expires_in":120}"#, 120, false),
            (
                r#"{"access_token":"a","expires_on":"1700000600"}"#,
                600,
                false,
            ),
            (r#"{"access_token":"a","expires_on":1699999000}"#, 0, false),
            (r#"{"access_token":"a","token_type":"bearer"}"#, 3600, false),
            (r#"{"access_token":"a","refresh_token":"r"}"#, 3600, true),
            (r#"{"access_token":"a","refresh_token":""}"#, 3600, false),
        ];
        for (body, lifetime, has_refresh) in cases {
            let grant = parse_grant(body.as_bytes(), now).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(grant.access_token.expose_secret(), "a", "{body}");
            assert_eq!(grant.lifetime, Duration::from_secs(lifetime), "{body}");
            assert_eq!(grant.refresh_token.is_some(), has_refresh, "{body}");
        }
        let refused = [
            ("[]", "the body is not a JSON object"),
            (
                r#"{"access_token":"  "}"#,
                "access_token is missing or empty",
            ),
            (r#"{"access_token":5}"#, "access_token is missing or empty"),
            (
                r#"{"access_token":"a","token_type":"MAC"}"#,
                "token_type is not Bearer",
            ),
        ];
        for (body, reason) in refused {
            assert_eq!(
                parse_grant(body.as_bytes(), now).err(),
                Some(reason),
                "{body}"
            );
        }
    }

    #[test]
    fn tokens_are_used_until_five_minutes_before_expiry() {
        let cases = [
            (3600, 3300),
            (3599, 3299),
            (601, 301),
            (600, 300),
            (300, 150),
            (1, 0),
            (0, 0),
        ];
        for (lifetime, used_for) in cases {
            assert_eq!(
                refresh_deadline(Duration::from_secs(lifetime)).as_secs(),
                used_for,
                "lifetime {lifetime}"
            );
        }
    }

    #[test]
    fn oauth_errors_keep_only_their_two_fields() {
        let long = "x".repeat(600);
        let body = serde_json::json!({"error": "invalid_client", "error_description": long, "secret": "s"});
        let (error, description) = oauth_error(body.to_string().as_bytes());
        assert_eq!(error.as_deref(), Some("invalid_client"));
        assert_eq!(
            description,
            Some(format!("{}… (600 characters in all)", "x".repeat(500)))
        );
        assert_eq!(oauth_error(b"<html>"), (None, None));
    }

    #[test]
    fn check_secret_file_reads_as_the_client_will_and_reports_exposure() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let directory = dir.path().join("directory");
        std::fs::create_dir(&directory).unwrap();
        let blank = dir.path().join("blank");
        std::fs::write(&blank, " \n").unwrap();
        let private = dir.path().join("private");
        std::fs::write(&private, "secret-value\n").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let shared = dir.path().join("shared");
        std::fs::write(&shared, "secret-value\n").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();

        let message = |path: &Path| {
            check_secret_file(SecretFile::Token, path)
                .unwrap_err()
                .to_string()
        };
        assert!(
            message(&missing).starts_with(&format!(
                "cannot read the token file {}: No such file or directory",
                missing.display()
            )),
            "{}",
            message(&missing)
        );
        assert!(
            message(&directory).starts_with(&format!(
                "cannot read the token file {}: Is a directory",
                directory.display()
            )),
            "{}",
            message(&directory)
        );
        assert_eq!(
            message(&blank),
            format!("the token file {} is empty", blank.display())
        );
        assert_eq!(
            check_secret_file(SecretFile::Token, &private).unwrap(),
            None
        );
        let cases = [
            ("SEK\nRET\n", "it has 2 lines"),
            ("SEKRET\r\nSECOND\r\n", "it has 2 lines"),
            ("SEK\u{1b}RET\n", "control byte 0x1b at byte 4"),
            ("SEK\0RET", "control byte 0x00 at byte 4"),
            ("SEK RET\n", "a space at byte 4"),
            ("SEKéRET\n", "non-ASCII byte 0xc3 at byte 4"),
        ];
        for (content, problem) in cases {
            let path = dir.path().join("bad");
            std::fs::write(&path, content).unwrap();
            for kind in [SecretFile::Token, SecretFile::RefreshToken] {
                let message = check_secret_file(kind, &path).unwrap_err().to_string();
                assert_eq!(
                    message,
                    format!(
                        "the {kind} {} is not one line of printable ASCII: {problem} (one line is expected; a trailing newline is allowed)",
                        path.display()
                    ),
                    "{content:?}"
                );
                assert!(!message.contains("SEK"), "{message}");
            }
            // A client secret is form-encoded: any text goes.
            assert!(check_secret_file(SecretFile::ClientSecret, &path).is_ok());
        }
        for fine in ["token\n", "  token\r\n", "token", "a.b-c_d~e*f/g+h=\n"] {
            std::fs::write(&private, fine).unwrap();
            assert!(
                check_secret_file(SecretFile::Token, &private).is_ok(),
                "{fine:?}"
            );
        }
        assert_eq!(
            check_secret_file(SecretFile::ClientSecret, &shared).unwrap(),
            Some(0o640)
        );
    }
}
