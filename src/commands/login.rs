//! `referral-sync login`: the first refresh token for the refresh-token
//! flow, by the OAuth 2.0 device authorization grant against Entra ID v2.
//!
//! It prints a URL and a code, waits while a person signs in on any
//! device, and writes the refresh token to `auth.refresh_token_file`
//! atomically with mode 0600. From then on `sync` and `run` refresh access
//! tokens themselves (and write rotated refresh tokens back).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::api::auth::{self, SecretFile};
use crate::api::device_login::{DeviceLogin, LoginError};
use crate::config::{AuthSettings, Settings};
use crate::exit::{ExitCode, Failure};
use crate::outln;

/// Run the sign-in. Exit codes: 0 signed in and written; 1 the person
/// declined or let the code expire; 2 the configuration cannot sign in; 6
/// the endpoint failed or the file cannot be written.
pub fn login_command(settings: Settings) -> Result<ExitCode, Failure> {
    let (flow, path) = device_login_flow(&settings)?;
    let http = http_client(&settings)?;
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let refresh_token = sign_in(&flow, &http).await?;
        write_refresh_token(path, refresh_token).await
    })
}

/// The device flow the refresh-token settings describe, and the file its
/// refresh token goes to.
fn device_login_flow(settings: &Settings) -> Result<(DeviceLogin, PathBuf), Failure> {
    let Some(AuthSettings::RefreshToken {
        client_id,
        client_secret_file,
        refresh_token_file,
        resource,
        login,
        ..
    }) = &settings.auth
    else {
        return Err(Failure::new(
            ExitCode::Config,
            "login writes auth.refresh_token_file: configure the refresh-token flow \
             (auth.tenant, auth.client_id, auth.refresh_token_file) instead of auth.token_file",
        ));
    };
    let Some(endpoints) = login else {
        return Err(Failure::new(
            ExitCode::Config,
            "auth.tenant is needed to sign in (or auth.device_code_url with a v2 auth.token_url)",
        ));
    };
    let client_secret = match client_secret_file {
        Some(path) => Some(
            auth::read_secret_file(SecretFile::ClientSecret, path).map_err(|e| {
                Failure::new(ExitCode::Config, format!("auth.client_secret_file: {e}"))
            })?,
        ),
        None => None,
    };
    let flow = DeviceLogin {
        device_code_url: endpoints.device_code_url.clone(),
        token_url: endpoints.token_url.clone(),
        client_id: client_id.clone(),
        client_secret,
        scope: auth::v2_scope(resource),
    };
    Ok((flow, refresh_token_file.clone()))
}

fn http_client(settings: &Settings) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .connect_timeout(settings.api.connect_timeout)
        .timeout(settings.api.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("referral-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            Failure::new(
                ExitCode::Runtime,
                format!("cannot build the HTTP client: {e}"),
            )
        })
}

/// Show the code, wait for the person to sign in; the refresh token.
async fn sign_in(flow: &DeviceLogin, http: &reqwest::Client) -> Result<SecretString, Failure> {
    let code = flow
        .start(http)
        .await
        .map_err(|e| Failure::new(ExitCode::Runtime, format!("cannot start the sign-in: {e}")))?;
    outln!(
        "To sign in, open {} in a browser and enter the code {}",
        code.verification_uri,
        code.user_code
    );
    outln!(
        "(as a user of the tenant who may use Partner Center referrals; the code expires in {})",
        minutes(code.expires_in)
    );
    flow.wait_for_grant(http, &code).await.map_err(|e| {
        // Declined or expired is the person's answer, not a fault.
        let code = if e.is_unfinished() {
            ExitCode::Records
        } else {
            ExitCode::Runtime
        };
        Failure::new(code, login_failure(&e))
    })
}

async fn write_refresh_token(
    path: PathBuf,
    refresh_token: SecretString,
) -> Result<ExitCode, Failure> {
    let written = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            auth::write_secret_atomically(&path, refresh_token.expose_secret())
        })
        .await
    };
    match written {
        Ok(Ok(())) => {
            tracing::info!(file = %path.display(), "signed in; refresh token written");
            outln!(
                "Signed in. The refresh token is in {} (mode 0600); `referral-sync sync` and `run` use it from now on.",
                path.display()
            );
            Ok(ExitCode::Ok)
        }
        Ok(Err(e)) => Err(Failure::new(
            ExitCode::Runtime,
            format!(
                "auth.refresh_token_file: cannot write {}: {e}; sign in again once it is writable",
                path.display()
            ),
        )),
        Err(e) => Err(Failure::new(
            ExitCode::Runtime,
            format!("the write task failed: {e}"),
        )),
    }
}

fn login_failure(error: &LoginError) -> String {
    format!("sign-in failed: {error}")
}

fn minutes(duration: Duration) -> String {
    let minutes = duration.as_secs().div_ceil(60);
    if minutes == 1 {
        "1 minute".to_owned()
    } else {
        format!("{minutes} minutes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_shown_in_whole_minutes_rounded_up() {
        assert_eq!(minutes(Duration::from_secs(900)), "15 minutes");
        assert_eq!(minutes(Duration::from_secs(61)), "2 minutes");
        assert_eq!(minutes(Duration::from_secs(30)), "1 minute");
    }
}
