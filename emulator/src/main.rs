//! A Partner Center Referrals API emulator, in memory, for loopback tests
//! and for trying referral-sync without an account.
//!
//! Prints `listening on http://ADDR` once bound; point `api.base_url` at
//! `http://ADDR/v1.0`. See the `pc_emulator` library for the endpoints.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use pc_emulator::{Emulator, EmulatorOptions};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "pc-emulator",
    version,
    about = "Emulate the Partner Center Referrals API on loopback, from memory"
)]
struct Flags {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// JSON file of existing referrals: an array, or {"value": [...]}.
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,

    /// An access token to accept (repeatable); it never expires.
    #[arg(long = "token", value_name = "TOKEN")]
    tokens: Vec<String>,

    /// A refresh token the token endpoint accepts (repeatable).
    #[arg(long = "refresh-token", value_name = "TOKEN")]
    refresh_tokens: Vec<String>,

    /// Lifetime of access tokens issued by the token endpoint.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    token_lifetime_secs: u64,

    /// JSON file of fault rules to start with.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,

    /// Delay added to every API and token request.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency_ms: u64,

    /// How long a device code of the device-code sign-in stays valid.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    device_code_lifetime_secs: u64,

    /// The polling interval the device-code endpoint asks clients for.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    device_code_interval_secs: u64,

    /// How many requests the journal keeps.
    #[arg(long, value_name = "ENTRIES", default_value_t = 100_000)]
    journal_limit: usize,

    /// Listen on an address other than loopback. The admin endpoints have
    /// no authentication: only do this on a trusted network.
    #[arg(long)]
    allow_non_loopback: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let flags = Flags::parse();
    if !flags.listen.ip().is_loopback() && !flags.allow_non_loopback {
        bail!(
            "refusing to listen on {}: not a loopback address, and the admin endpoints have no authentication (pass --allow-non-loopback to override)",
            flags.listen
        );
    }
    if flags.tokens.is_empty() && flags.refresh_tokens.is_empty() {
        tracing::warn!("no --token and no --refresh-token: every API request will get 401");
    }

    let seed = match &flags.seed {
        Some(path) => pc_emulator::load_seed(path)?,
        None => Vec::new(),
    };
    let faults = match &flags.faults {
        Some(path) => pc_emulator::load_faults(path)?,
        None => Vec::new(),
    };
    let options = EmulatorOptions {
        seed,
        access_tokens: flags.tokens,
        refresh_tokens: flags.refresh_tokens,
        token_lifetime: Duration::from_secs(flags.token_lifetime_secs),
        faults,
        latency: Duration::from_millis(flags.latency_ms),
        journal_limit: flags.journal_limit,
        device_code_lifetime: Duration::from_secs(flags.device_code_lifetime_secs),
        device_code_interval: Duration::from_secs(flags.device_code_interval_secs),
    };
    let emulator = Emulator::new(options).with_context(|| match &flags.seed {
        Some(path) => format!("cannot seed from {}", path.display()),
        None => "cannot start the emulator".to_owned(),
    })?;

    // Handlers are installed before the address is announced, so a signal
    // sent right after reading it is a clean shutdown, not a kill.
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(flags.listen)
        .await
        .with_context(|| format!("cannot listen on {}", flags.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{address}")?;
        stdout.flush()?;
    }
    emulator.serve(listener, shutdown).await?;
    Ok(())
}

#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send> {
    Ok(async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot wait for Ctrl-C");
            std::future::pending::<()>().await;
        }
    })
}
