//! Wiring: the validated settings → a ready Partner Center client (token
//! provider, shared request gate, HTTP client).

use std::sync::Arc;

use crate::api::auth::{AuthOptions, SecretFile, TokenProvider, check_secret_file};
use crate::api::gate::{GateOptions, RequestGate};
use crate::api::{ApiClient, ClientOptions, RequestObserver};
use crate::config::{AuthSettings, Settings};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "no credentials configured: set auth.token_file, or auth.refresh_token_file with auth.client_id and auth.tenant"
    )]
    NoCredentials,
    #[error("api: {0}")]
    Client(Box<crate::api::ApiError>),
    #[error("api.concurrency / api.max_requests_per_second: {0}")]
    Gate(#[from] crate::api::gate::GateError),
}

impl From<crate::api::ApiError> for ServiceError {
    fn from(e: crate::api::ApiError) -> Self {
        ServiceError::Client(Box::new(e))
    }
}

/// The multi-threaded runtime every command runs on.
pub fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Read every configured secret file as the client will (nothing of it is
/// kept), so that start-up stops on a file a cycle could not use, naming
/// the key and the file: `Err("auth.token_file: the token file … ")`.
pub fn check_secret_files(settings: &Settings) -> Result<(), String> {
    let files: Vec<(SecretFile, &std::path::Path)> = match &settings.auth {
        None => Vec::new(),
        Some(AuthSettings::TokenFile(path)) => vec![(SecretFile::Token, path.as_path())],
        Some(AuthSettings::RefreshToken {
            client_secret_file,
            refresh_token_file,
            ..
        }) => {
            let mut files = vec![(SecretFile::RefreshToken, refresh_token_file.as_path())];
            if let Some(path) = client_secret_file {
                files.push((SecretFile::ClientSecret, path.as_path()));
            }
            files
        }
    };
    for (kind, path) in files {
        check_secret_file(kind, path).map_err(|e| format!("{}: {e}", kind.key()))?;
    }
    Ok(())
}

/// The client for `settings`, with one request gate shared by every worker.
pub fn build_client(settings: &Settings) -> Result<ApiClient, ServiceError> {
    build_observed_client(settings, None)
}

/// As [`build_client`], telling `observer` (the metrics) of every request.
pub fn build_observed_client(
    settings: &Settings,
    observer: Option<Arc<dyn RequestObserver>>,
) -> Result<ApiClient, ServiceError> {
    let auth = match settings.auth.as_ref().ok_or(ServiceError::NoCredentials)? {
        AuthSettings::TokenFile(path) => AuthOptions::TokenFile { path: path.clone() },
        AuthSettings::RefreshToken {
            token_url,
            client_id,
            client_secret_file,
            refresh_token_file,
            resource,
            ..
        } => AuthOptions::RefreshToken {
            token_url: token_url.clone(),
            client_id: client_id.clone(),
            client_secret_file: client_secret_file.clone(),
            refresh_token_file: refresh_token_file.clone(),
            resource: resource.clone(),
        },
    };
    let options = ClientOptions {
        base_url: settings.api.base_url.clone(),
        request_timeout: settings.api.request_timeout,
        connect_timeout: settings.api.connect_timeout,
        retry: settings.api.retry.clone(),
        allow_insecure: settings.api.allow_insecure,
        max_response_bytes: settings.api.max_response_bytes,
        max_list_pages: settings.api.max_list_pages,
        max_empty_list_pages: settings.api.max_empty_list_pages,
    };
    let http = ApiClient::http_client(&options)?;
    let tokens = Arc::new(TokenProvider::new(auth, http.clone()));
    let gate = Arc::new(RequestGate::new(&GateOptions {
        concurrency: settings.api.concurrency,
        max_requests_per_second: settings.api.max_requests_per_second,
    })?);
    let client = ApiClient::with_http_client(options, http, gate, tokens)?;
    Ok(match observer {
        Some(observer) => client.observed_by(observer),
        None => client,
    })
}
