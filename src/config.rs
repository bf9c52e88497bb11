//! Configuration: a TOML file (`--config PATH` or `REFERRAL_SYNC_CONFIG`)
//! with every key overridable by `REFERRAL_SYNC__SECTION__KEY` environment
//! variables, parsed once into validated [`Settings`]. Nothing else in the
//! program reads raw configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use croner::Cron;
use serde::Deserialize;

use crate::api::retry::RetryPolicy;
use crate::diff::OnCleared;
use crate::export::{ExportChecks, ExportFormat, FinalLineEnd};
use crate::mapping::{Mapper, MappingSpec};
use crate::merge::ConflictPolicy;
use crate::model::Entity;

/// The production Referrals API.
pub const DEFAULT_BASE_URL: &str = "https://api.partner.microsoft.com/v1.0";
/// The resource the Partner Center tokens are issued for.
pub const PARTNER_CENTER_RESOURCE: &str = "https://api.partner.microsoft.com";
/// Prefix of environment overrides: `REFERRAL_SYNC__API__CONCURRENCY=8`.
pub const ENV_PREFIX: &str = "REFERRAL_SYNC";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: config::ConfigError,
    },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration: {0}")]
    Mapping(#[from] crate::mapping::MappingConfigError),
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: Option<String>,
    allow_remote: bool,
    textfile: Option<PathBuf>,
}

/// `[metrics]`, validated: where the Prometheus metrics go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `metrics.listen`: the daemon serves `GET /metrics` here.
    pub listen: Option<std::net::SocketAddr>,
    /// `metrics.textfile`: written atomically after every cycle.
    pub textfile: Option<PathBuf>,
}

impl MetricsSettings {
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.textfile.is_some()
    }
}

fn metrics_settings(
    raw: RawMetrics,
    resolve: impl Fn(&Path) -> PathBuf,
) -> Result<MetricsSettings, ConfigError> {
    let listen = match raw.listen.as_deref().map(str::trim) {
        None => None,
        Some("") => return Err(invalid("metrics.listen", "must not be empty")),
        Some(text) => {
            let addr: std::net::SocketAddr = text.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{text:?} is not an IP address and port such as \"127.0.0.1:9464\""),
                )
            })?;
            // The metrics carry no secret, but they tell anyone who can
            // reach them how many records the CRM holds and how the sync
            // fares, and the server has no authentication of its own.
            if !addr.ip().is_loopback() && !raw.allow_remote {
                return Err(invalid(
                    "metrics.listen",
                    format!(
                        "{addr} is not a loopback address; the metrics endpoint has no authentication. \
                         Set metrics.allow_remote = true to serve it beyond this host"
                    ),
                ));
            }
            Some(addr)
        }
    };
    let textfile = match raw.textfile {
        None => None,
        Some(p) if p.as_os_str().is_empty() => {
            return Err(invalid("metrics.textfile", "must not be empty"));
        }
        Some(p) => {
            let path = resolve(&p);
            if path.file_name().is_none() {
                return Err(invalid(
                    "metrics.textfile",
                    format!("{} does not name a file", path.display()),
                ));
            }
            Some(path)
        }
    };
    Ok(MetricsSettings { listen, textfile })
}

// ---------------------------------------------------------------------------
// Raw configuration, exactly as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    export: RawExport,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    create: RawCreate,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    mapping: MappingSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    path: PathBuf,
    #[serde(default)]
    format: ExportFormat,
    entity: Entity,
    #[serde(default = "require_final_newline_by_default")]
    require_final_newline: bool,
    #[serde(default)]
    settle_secs: f64,
}

fn require_final_newline_by_default() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
    history_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApi {
    base_url: String,
    concurrency: usize,
    max_requests_per_second: Option<f64>,
    request_timeout_secs: f64,
    connect_timeout_secs: f64,
    update_method: UpdateMethod,
    allow_insecure: bool,
    retry: RetryPolicy,
    max_response_bytes: u64,
    max_list_pages: u64,
    max_empty_list_pages: u64,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            base_url: DEFAULT_BASE_URL.to_owned(),
            concurrency: 4,
            max_requests_per_second: None,
            request_timeout_secs: 30.0,
            connect_timeout_secs: 10.0,
            update_method: UpdateMethod::Patch,
            allow_insecure: false,
            retry: RetryPolicy::default(),
            max_response_bytes: crate::api::DEFAULT_MAX_RESPONSE_BYTES,
            max_list_pages: crate::api::DEFAULT_MAX_LIST_PAGES,
            max_empty_list_pages: crate::api::DEFAULT_MAX_EMPTY_LIST_PAGES,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    token_file: Option<PathBuf>,
    tenant: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    refresh_token_file: Option<PathBuf>,
    token_url: Option<String>,
    authority: Option<String>,
    device_code_url: Option<String>,
    resource: Option<String>,
}

/// The Entra ID authority of the public cloud; sovereign clouds have their
/// own (`https://login.microsoftonline.us`, `https://login.partner.microsoftonline.cn`).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSync {
    default_currency: String,
    on_cleared: OnCleared,
    conflict: ConflictPolicy,
    max_conflict_retries: u32,
    create_missing: bool,
    max_missing_ratio: f64,
    create_confirm_secs: u64,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            default_currency: "USD".to_owned(),
            on_cleared: OnCleared::Null,
            conflict: ConflictPolicy::CrmWins,
            max_conflict_retries: 5,
            create_missing: false,
            max_missing_ratio: 0.5,
            create_confirm_secs: 300,
        }
    }
}

/// Members sent only when a referral is created, never patched afterwards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCreate {
    #[serde(rename = "type")]
    pub referral_type: String,
    pub qualification: String,
    pub consent_to_share_info_with_others: bool,
    pub consent_to_contact: bool,
    pub consent_to_share_referral_with_microsoft_sellers: Option<bool>,
    /// `[{ type = "SolutionProfile", id = "..." }]`; required for `Shared`.
    pub target: Vec<BTreeMap<String, String>>,
    pub partner_role: Option<String>,
    /// Required for services co-sell referrals; the taxonomy changes by
    /// fiscal year.
    pub solution_area: Option<String>,
    pub solution_play: Option<String>,
    /// `customerProfile.ids`: `[{ profile_type = "Duns", id = "..." }]`.
    pub customer_ids: Vec<crate::create_defaults::RawProfileId>,
    /// `details.requirements`.
    pub requirements: crate::create_defaults::RawRequirements,
}

impl RawCreate {
    /// The keys [`crate::create_defaults`] validates and applies.
    pub fn defaults(&self) -> crate::create_defaults::RawCreateDefaults<'_> {
        crate::create_defaults::RawCreateDefaults {
            referral_type: &self.referral_type,
            qualification: &self.qualification,
            consent_to_share_info_with_others: self.consent_to_share_info_with_others,
            consent_to_contact: self.consent_to_contact,
            consent_to_share_referral_with_microsoft_sellers: self
                .consent_to_share_referral_with_microsoft_sellers,
            target: &self.target,
            partner_role: self.partner_role.as_deref(),
            solution_area: self.solution_area.as_deref(),
            solution_play: self.solution_play.as_deref(),
            customer_ids: &self.customer_ids,
            requirements: &self.requirements,
        }
    }
}

impl Default for RawCreate {
    fn default() -> Self {
        RawCreate {
            referral_type: "Independent".to_owned(),
            qualification: "None".to_owned(),
            consent_to_share_info_with_others: false,
            consent_to_contact: false,
            consent_to_share_referral_with_microsoft_sellers: None,
            target: Vec::new(),
            partner_role: None,
            solution_area: None,
            solution_play: None,
            customer_ids: Vec::new(),
            requirements: crate::create_defaults::RawRequirements::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSchedule {
    cron: String,
    timezone: String,
}

impl Default for RawSchedule {
    fn default() -> Self {
        RawSchedule {
            cron: "0 */5 * * * *".to_owned(),
            timezone: "UTC".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    shutdown_grace_secs: f64,
}

impl Default for RawDaemon {
    fn default() -> Self {
        RawDaemon {
            shutdown_grace_secs: 30.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: LogFormat,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------
// Validated settings.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpdateMethod {
    #[default]
    Patch,
    Put,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub path: PathBuf,
    pub format: ExportFormat,
    pub entity: Entity,
    /// `export.require_final_newline` and `export.settle_secs`.
    pub checks: ExportChecks,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: String,
    pub concurrency: usize,
    pub max_requests_per_second: Option<f64>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub update_method: UpdateMethod,
    pub retry: RetryPolicy,
    pub allow_insecure: bool,
    /// The largest answer body read from the service.
    pub max_response_bytes: u64,
    pub max_list_pages: u64,
    pub max_empty_list_pages: u64,
}

/// How bearer tokens are obtained. Paths only: secrets are read when used.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthSettings {
    TokenFile(PathBuf),
    RefreshToken {
        /// v1 (`…/oauth2/token`, sends `resource`) or v2
        /// (`…/oauth2/v2.0/token`, sends `scope`).
        token_url: String,
        client_id: String,
        client_secret_file: Option<PathBuf>,
        refresh_token_file: PathBuf,
        /// The API the tokens are for (`auth.resource`).
        resource: String,
        /// Where `referral-sync login` signs in; `None` when neither
        /// `auth.tenant` nor both endpoints are configured.
        login: Option<LoginEndpoints>,
    },
}

/// The Entra ID v2 endpoints of the device-code sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginEndpoints {
    pub device_code_url: String,
    pub token_url: String,
}

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub default_currency: String,
    pub on_cleared: OnCleared,
    pub conflict: ConflictPolicy,
    pub max_conflict_retries: u32,
    pub create_missing: bool,
    pub max_missing_ratio: f64,
    /// A create whose outcome is unknown is repeated only when a listing
    /// made at least this long after it shows no such referral.
    pub create_confirm_secs: u64,
}

/// `[schedule]`, parsed: the expression as written (what the scheduler is
/// given and the log shows), what it parses to, and the zone it runs in.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    expression: String,
    cron: Cron,
    timezone: Tz,
}

impl ScheduleSettings {
    /// Six fields, seconds first, parsed as the scheduler parses them, in
    /// an IANA time zone.
    pub fn parse(expression: &str, timezone: &str) -> Result<ScheduleSettings, ConfigError> {
        let fields = expression.split_whitespace().count();
        if fields != 6 {
            return Err(invalid(
                "schedule.cron",
                format!(
                    "{expression:?} has {fields} fields; six are needed (seconds first), e.g. \"0 */5 * * * *\""
                ),
            ));
        }
        let cron = crate::cron::parse_cron(expression).map_err(|e| {
            invalid(
                "schedule.cron",
                format!("{expression:?} is not a valid expression: {}", e.message),
            )
        })?;
        let timezone = timezone.parse::<Tz>().map_err(|_| {
            invalid(
                "schedule.timezone",
                format!("{timezone:?} is not an IANA time zone"),
            )
        })?;
        Ok(ScheduleSettings {
            expression: expression.to_owned(),
            cron,
            timezone,
        })
    }

    /// `schedule.cron` as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn cron(&self) -> &Cron {
        &self.cron
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file it came from.
    pub source: PathBuf,
    pub export: ExportSettings,
    pub store_path: PathBuf,
    /// How long a record's history is kept (`store.history_days`).
    pub history_days: u32,
    pub api: ApiSettings,
    /// `None` when no credentials are configured: a dry run still works.
    pub auth: Option<AuthSettings>,
    pub sync: SyncSettings,
    /// `[create]`, validated, for [`crate::create_defaults::apply`].
    pub create_defaults: crate::create_defaults::CreateDefaults,
    pub schedule: ScheduleSettings,
    pub shutdown_grace: Duration,
    pub log: LogSettings,
    /// The shipped default for the entity with the file's overrides on top.
    pub mapping: MappingSpec,
    /// `mapping`, built; see [`Settings::mapper`].
    mapper: Arc<Mapper>,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
}

impl Settings {
    /// Load `path`, apply environment overrides from the process
    /// environment, and validate.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let load_error = |source| ConfigError::Load {
            path: path.to_owned(),
            source,
        };
        if !path.is_file() {
            return Err(invalid(
                "--config",
                format!("{} is not a readable file", path.display()),
            ));
        }
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::new(
                &path.to_string_lossy(),
                config::FileFormat::Toml,
            ))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .separator("__")
                    .try_parsing(true)
                    .source(env),
            )
            .build()
            .map_err(load_error)?
            .try_deserialize()
            .map_err(load_error)?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Settings::validate(raw, path, &base_dir)
    }

    fn validate(raw: RawConfig, source: &Path, base_dir: &Path) -> Result<Settings, ConfigError> {
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base_dir.join(p)
            }
        };
        let credential = |p: &Path| -> PathBuf { resolve_credential(p, base_dir) };

        let export_checks = validate_export(&raw.export)?;
        let (store_path, history_days) = validate_store(raw.store, resolve)?;
        let api = validate_api(raw.api)?;
        let auth = validate_auth(raw.auth, &credential, api.allow_insecure)?;
        let sync = validate_sync(raw.sync)?;
        let create_defaults = validate_create(&raw.create, sync.create_missing)?;
        let schedule = ScheduleSettings::parse(&raw.schedule.cron, &raw.schedule.timezone)?;
        let shutdown_grace = shutdown_grace(raw.daemon.shutdown_grace_secs)?;
        let log = validate_log(raw.log)?;
        let metrics = metrics_settings(raw.metrics, resolve)?;
        let mapping = MappingSpec::default_for(raw.export.entity).overlay(raw.mapping);
        // Built here so that a bad mapping stops start-up, and kept so that
        // nothing builds it again.
        let mapper = Mapper::new(&mapping, raw.export.entity, &sync.default_currency)?;

        Ok(Settings {
            source: source.to_owned(),
            export: ExportSettings {
                path: resolve(&raw.export.path),
                format: raw.export.format,
                entity: raw.export.entity,
                checks: export_checks,
            },
            store_path,
            history_days,
            api,
            auth,
            sync,
            create_defaults,
            schedule,
            shutdown_grace,
            log,
            mapping,
            mapper: Arc::new(mapper),
            metrics,
        })
    }

    /// The mapping, built at validation: the daemon's cycles and a manual
    /// cycle share it.
    pub fn mapper(&self) -> Arc<Mapper> {
        Arc::clone(&self.mapper)
    }

    /// The export reader options for this configuration.
    pub fn export_options(&self) -> crate::export::ExportOptions {
        crate::export::ExportOptions {
            path: self.export.path.clone(),
            format: self.export.format,
            entity: self.export.entity,
            header_aliases: self.mapping.headers.clone(),
            checks: self.export.checks,
        }
    }
}

fn validate_export(raw: &RawExport) -> Result<ExportChecks, ConfigError> {
    if raw.path.as_os_str().is_empty() {
        return Err(invalid("export.path", "must not be empty"));
    }
    let settle_secs = raw.settle_secs;
    if !(settle_secs.is_finite() && (0.0..=86_400.0).contains(&settle_secs)) {
        return Err(invalid(
            "export.settle_secs",
            "must be a number of seconds between 0 and 86400",
        ));
    }
    Ok(ExportChecks {
        final_line_end: if raw.require_final_newline {
            FinalLineEnd::Required
        } else {
            FinalLineEnd::Optional
        },
        settle: Duration::from_secs_f64(settle_secs),
    })
}

/// The store's path and how many days of history it keeps.
fn validate_store(
    raw: RawStore,
    resolve: impl Fn(&Path) -> PathBuf,
) -> Result<(PathBuf, u32), ConfigError> {
    let history_days = raw.history_days.unwrap_or(90);
    if history_days == 0 {
        return Err(invalid(
            "store.history_days",
            "must be at least 1 (a record's history is what explains it)",
        ));
    }
    let store_path = match raw.path {
        Some(p) if p.as_os_str().is_empty() => {
            return Err(invalid("store.path", "must not be empty"));
        }
        Some(p) => resolve(&p),
        None => default_store_path(),
    };
    Ok((store_path, history_days))
}

fn validate_sync(sync: RawSync) -> Result<SyncSettings, ConfigError> {
    let currency = sync.default_currency.trim().to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            "sync.default_currency",
            format!("{:?} is not an ISO 4217 code", sync.default_currency),
        ));
    }
    if !(0.0..=1.0).contains(&sync.max_missing_ratio) {
        return Err(invalid("sync.max_missing_ratio", "must be between 0 and 1"));
    }
    if sync.max_conflict_retries == 0 {
        return Err(invalid("sync.max_conflict_retries", "must be at least 1"));
    }
    Ok(SyncSettings {
        default_currency: currency,
        on_cleared: sync.on_cleared,
        conflict: sync.conflict,
        max_conflict_retries: sync.max_conflict_retries,
        create_missing: sync.create_missing,
        max_missing_ratio: sync.max_missing_ratio,
        create_confirm_secs: sync.create_confirm_secs,
    })
}

/// `[create]`: the type and qualification Partner Center knows, a target
/// for a Shared referral the sync may create, then the rest of the
/// defaults.
fn validate_create(
    create: &RawCreate,
    create_missing: bool,
) -> Result<crate::create_defaults::CreateDefaults, ConfigError> {
    const TYPES: [&str; 2] = ["Independent", "Shared"];
    if !TYPES.contains(&create.referral_type.as_str()) {
        return Err(invalid(
            "create.type",
            format!("{:?} is not one of {TYPES:?}", create.referral_type),
        ));
    }
    const QUALIFICATIONS: [&str; 4] = ["None", "Direct", "MarketingQualified", "SalesQualified"];
    if !QUALIFICATIONS.contains(&create.qualification.as_str()) {
        return Err(invalid(
            "create.qualification",
            format!(
                "{:?} is not one of {QUALIFICATIONS:?}",
                create.qualification
            ),
        ));
    }
    if create.referral_type == "Shared" && create.target.is_empty() && create_missing {
        return Err(invalid(
            "create.target",
            "a Shared referral needs at least one target",
        ));
    }
    crate::create_defaults::CreateDefaults::new(&create.defaults()).map_err(|e| {
        ConfigError::Invalid {
            key: e.key,
            message: e.message,
        }
    })
}

/// A number of seconds too large for a `Duration` (1e30) is refused like a
/// negative one, instead of panicking where it is converted.
fn shutdown_grace(secs: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        invalid(
            "daemon.shutdown_grace_secs",
            "must be a non-negative number",
        )
    })
}

fn validate_log(raw: RawLog) -> Result<LogSettings, ConfigError> {
    if tracing_subscriber::EnvFilter::try_new(&raw.level).is_err() {
        return Err(invalid(
            "log.level",
            format!("{:?} is not a level or filter directive", raw.level),
        ));
    }
    Ok(LogSettings {
        format: raw.format,
        level: raw.level,
    })
}

/// `$STATE_DIRECTORY/referral-sync.db` under systemd, else `./referral-sync.db`.
fn default_store_path() -> PathBuf {
    let dir = std::env::var_os("STATE_DIRECTORY")
        .map(|dirs| {
            // systemd passes a colon-separated list when several are set.
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned();
            PathBuf::from(first)
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join("referral-sync.db")
}

/// A relative secret path names a systemd credential when
/// `$CREDENTIALS_DIRECTORY` is set (`LoadCredential=`), else a file beside
/// the configuration.
fn resolve_credential(path: &Path, base_dir: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let candidate = PathBuf::from(dir).join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    base_dir.join(path)
}

/// A URL bearer tokens or secrets are sent to: https, or plain http only to
/// this machine unless `allow_insecure`.
fn secure_url(key: &str, text: &str, allow_insecure: bool) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| invalid(key, format!("{text:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback || allow_insecure {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!(
                        "{text:?} is plain http to a host that is not loopback; \
                         use https, or set api.allow_insecure = true"
                    ),
                ))
            }
        }
        other => Err(invalid(
            key,
            format!("scheme {other:?} is not http or https"),
        )),
    }
}

fn validate_api(raw: RawApi) -> Result<ApiSettings, ConfigError> {
    let base_url = raw.base_url.trim_end_matches('/').to_owned();
    secure_url("api.base_url", &base_url, raw.allow_insecure)?;
    raw.retry
        .validate()
        .map_err(|e| invalid("api.retry", e.to_string()))?;
    if raw.concurrency == 0 || raw.concurrency > 256 {
        return Err(invalid("api.concurrency", "must be between 1 and 256"));
    }
    if let Some(rate) = raw.max_requests_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(invalid(
            "api.max_requests_per_second",
            "must be a positive number (leave it out for no limit)",
        ));
    }
    for (key, value) in [
        ("api.max_response_bytes", raw.max_response_bytes),
        ("api.max_list_pages", raw.max_list_pages),
        ("api.max_empty_list_pages", raw.max_empty_list_pages),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    let secs = |key: &str, v: f64| -> Result<Duration, ConfigError> {
        match Duration::try_from_secs_f64(v) {
            Ok(duration) if v > 0.0 => Ok(duration),
            _ => Err(invalid(key, "must be a positive number of seconds")),
        }
    };
    Ok(ApiSettings {
        base_url,
        concurrency: raw.concurrency,
        max_requests_per_second: raw.max_requests_per_second,
        request_timeout: secs("api.request_timeout_secs", raw.request_timeout_secs)?,
        connect_timeout: secs("api.connect_timeout_secs", raw.connect_timeout_secs)?,
        update_method: raw.update_method,
        retry: raw.retry,
        allow_insecure: raw.allow_insecure,
        max_response_bytes: raw.max_response_bytes,
        max_list_pages: raw.max_list_pages,
        max_empty_list_pages: raw.max_empty_list_pages,
    })
}

fn validate_auth(
    raw: RawAuth,
    credential: &dyn Fn(&Path) -> PathBuf,
    allow_insecure: bool,
) -> Result<Option<AuthSettings>, ConfigError> {
    match (&raw.token_file, &raw.refresh_token_file) {
        (Some(_), Some(_)) => Err(invalid(
            "auth.token_file",
            "set either auth.token_file or auth.refresh_token_file, not both",
        )),
        (Some(token_file), None) => Ok(Some(AuthSettings::TokenFile(credential(token_file)))),
        (None, Some(refresh_token_file)) => {
            let refresh_token_file = credential(refresh_token_file);
            refresh_token_flow(raw, refresh_token_file, credential, allow_insecure).map(Some)
        }
        (None, None) => {
            if raw.client_id.is_some() || raw.tenant.is_some() || raw.client_secret_file.is_some() {
                return Err(invalid(
                    "auth.refresh_token_file",
                    "required when auth.client_id, auth.tenant or auth.client_secret_file is set",
                ));
            }
            Ok(None)
        }
    }
}

/// `auth.refresh_token_file` is set: the client, where its tokens come
/// from, and where `referral-sync login` signs in.
fn refresh_token_flow(
    raw: RawAuth,
    refresh_token_file: PathBuf,
    credential: &dyn Fn(&Path) -> PathBuf,
    allow_insecure: bool,
) -> Result<AuthSettings, ConfigError> {
    let client_id = raw
        .client_id
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| invalid("auth.client_id", "required with auth.refresh_token_file"))?;
    let authority = authority(raw.authority.as_deref(), allow_insecure)?;
    let tenant = tenant(raw.tenant.as_deref())?;
    let v2 = |endpoint: &str| {
        tenant.map(|tenant| format!("{authority}/{tenant}/oauth2/v2.0/{endpoint}"))
    };
    let token_url = match (raw.token_url, v2("token")) {
        (Some(url), _) => url,
        (None, Some(url)) => url,
        (None, None) => {
            return Err(invalid(
                "auth.tenant",
                "required with auth.refresh_token_file (or set auth.token_url)",
            ));
        }
    };
    // The refresh token and the client secret travel there.
    secure_url("auth.token_url", &token_url, allow_insecure)?;
    let login = login_endpoints(&token_url, raw.device_code_url, v2, allow_insecure)?;
    let resource = raw
        .resource
        .as_deref()
        .unwrap_or(PARTNER_CENTER_RESOURCE)
        .trim()
        .trim_end_matches('/')
        .to_owned();
    secure_url("auth.resource", &resource, true)?;
    Ok(AuthSettings::RefreshToken {
        token_url,
        client_id,
        client_secret_file: raw.client_secret_file.as_deref().map(credential),
        refresh_token_file,
        resource,
        login,
    })
}

/// `auth.authority` without its trailing slash, or the public cloud's.
fn authority(configured: Option<&str>, allow_insecure: bool) -> Result<String, ConfigError> {
    let authority = configured
        .unwrap_or(DEFAULT_AUTHORITY)
        .trim()
        .trim_end_matches('/')
        .to_owned();
    if configured.is_some() {
        secure_url("auth.authority", &authority, allow_insecure)?;
    }
    Ok(authority)
}

/// `auth.tenant`, when set: it becomes part of the endpoints' paths.
fn tenant(configured: Option<&str>) -> Result<Option<&str>, ConfigError> {
    let tenant = configured
        .map(str::trim)
        .filter(|tenant| !tenant.is_empty());
    if let Some(tenant) = tenant
        && !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(invalid(
            "auth.tenant",
            format!("{tenant:?} is not a tenant id or domain name"),
        ));
    }
    Ok(tenant)
}

/// The device-code sign-in signs in at v2: the refresh flow's token
/// endpoint when it is one, else the tenant's.
fn login_endpoints(
    token_url: &str,
    device_code_url: Option<String>,
    v2: impl Fn(&str) -> Option<String>,
    allow_insecure: bool,
) -> Result<Option<LoginEndpoints>, ConfigError> {
    let login_token_url = if crate::api::auth::is_v2_endpoint(token_url) {
        Some(token_url.to_owned())
    } else {
        v2("token")
    };
    let device_code_url = device_code_url.or_else(|| v2("devicecode"));
    if let Some(url) = &device_code_url {
        secure_url("auth.device_code_url", url, allow_insecure)?;
    }
    Ok(match (device_code_url, login_token_url) {
        (Some(device_code_url), Some(token_url)) => Some(LoginEndpoints {
            device_code_url,
            token_url,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("referral-sync.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), text);
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with_env(&path, Some(env))
    }

    const MINIMAL: &str = "[export]\npath = \"export.json\"\nentity = \"opportunity\"\n";

    #[test]
    fn the_shipped_files_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["config/referral-sync.toml", "examples/referral-sync.toml"] {
            // Loading builds the mapping too.
            Settings::load_with_env(&root.join(file), Some(HashMap::new()))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn seconds_too_large_for_a_duration_are_refused_by_key() {
        let dir = tempfile::tempdir().unwrap();
        for (table, key, message) in [
            (
                "daemon",
                "shutdown_grace_secs",
                "must be a non-negative number",
            ),
            (
                "api",
                "request_timeout_secs",
                "must be a positive number of seconds",
            ),
            (
                "api",
                "connect_timeout_secs",
                "must be a positive number of seconds",
            ),
        ] {
            for value in ["1e30", "-1.0", "nan"] {
                let text = format!("{MINIMAL}\n[{table}]\n{key} = {value}\n");
                let path = write(dir.path(), &text);
                let error = Settings::load_with_env(&path, Some(HashMap::new()))
                    .map(|_| ())
                    .unwrap_err()
                    .to_string();
                assert!(
                    error.contains(&format!("{table}.{key}")) && error.contains(message),
                    "{table}.{key} = {value}: {error}"
                );
            }
        }
    }

    #[test]
    fn defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), MINIMAL);
        let s = Settings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert_eq!(s.export.path, dir.path().join("export.json"));
        assert_eq!(s.api.base_url, DEFAULT_BASE_URL);
        assert_eq!(s.api.concurrency, 4);
        assert_eq!(s.sync.on_cleared, OnCleared::Null);
        assert_eq!(s.sync.conflict, ConflictPolicy::CrmWins);
        assert_eq!(s.sync.max_conflict_retries, 5);
        assert!(!s.sync.create_missing);
        assert_eq!(s.auth, None);
    }

    #[test]
    fn environment_overrides_any_key() {
        let s = load(
            MINIMAL,
            &[
                ("REFERRAL_SYNC__API__CONCURRENCY", "9"),
                ("REFERRAL_SYNC__SYNC__CONFLICT", "remote-wins"),
                ("REFERRAL_SYNC__EXPORT__ENTITY", "lead"),
            ],
        )
        .unwrap();
        assert_eq!(s.api.concurrency, 9);
        assert_eq!(s.sync.conflict, ConflictPolicy::RemoteWins);
        assert_eq!(s.export.entity, Entity::Lead);
    }

    #[test]
    fn errors_name_the_key() {
        // (configuration text, environment, expected fragment of the error)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "[export]\npath = \"x\"\nentity = \"opportunity\"\ntypo = 1\n",
                &[],
                "unknown field `typo`",
            ),
            ("[export]\nentity = \"opportunity\"\n", &[], "export.path"),
            (
                "[export]\npath = \"x\"\nentity = \"account\"\n",
                &[],
                "does not have variant constructor account for key `export.entity`",
            ),
            (
                MINIMAL,
                &[("REFERRAL_SYNC__API__CONCURRENCY", "0")],
                "`api.concurrency`",
            ),
            (
                MINIMAL,
                &[(
                    "REFERRAL_SYNC__API__BASE_URL",
                    "http://api.example.com/v1.0",
                )],
                "`api.base_url`",
            ),
            (
                MINIMAL,
                &[("REFERRAL_SYNC__SCHEDULE__CRON", "*/5 * * * *")],
                "`schedule.cron`: \"*/5 * * * *\" has 5 fields",
            ),
            (
                MINIMAL,
                &[("REFERRAL_SYNC__SCHEDULE__CRON", "0 99 * * * *")],
                "`schedule.cron`",
            ),
            (
                MINIMAL,
                &[("REFERRAL_SYNC__SCHEDULE__TIMEZONE", "Mars/Olympus")],
                "`schedule.timezone`",
            ),
            (
                MINIMAL,
                &[("REFERRAL_SYNC__SYNC__DEFAULT_CURRENCY", "dollars")],
                "`sync.default_currency`",
            ),
            (
                MINIMAL,
                &[("REFERRAL_SYNC__SYNC__ON_CLEARED", "erase")],
                "sync.on_cleared",
            ),
            (
                MINIMAL,
                &[("REFERRAL_SYNC__AUTH__CLIENT_ID", "abc")],
                "`auth.refresh_token_file`",
            ),
            (
                "[export]\npath = \"x\"\nentity = \"opportunity\"\n[auth]\nrefresh_token_file = \"rt\"\nclient_id = \"c\"\n",
                &[],
                "`auth.tenant`",
            ),
            (
                MINIMAL,
                &[("REFERRAL_SYNC__LOG__FORMAT", "xml")],
                "log.format",
            ),
            (
                "[export]\npath = \"x\"\nentity = \"opportunity\"\n[mapping.fields.\"details.dealValue\"]\nfrom = \"estimatedvalue\"\ntype = \"moneyy\"\n",
                &[],
                "moneyy",
            ),
        ];
        for (text, env, expected) in cases {
            let err = load(text, env).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in: {err}");
        }
    }

    #[test]
    fn answer_and_listing_bounds_default_and_refuse_zero() {
        let s = load(MINIMAL, &[]).unwrap();
        assert_eq!(s.api.max_response_bytes, 16 * 1024 * 1024);
        assert_eq!(s.api.max_list_pages, 10_000);
        assert_eq!(s.api.max_empty_list_pages, 10);
        for key in [
            "MAX_RESPONSE_BYTES",
            "MAX_LIST_PAGES",
            "MAX_EMPTY_LIST_PAGES",
        ] {
            let variable = format!("REFERRAL_SYNC__API__{key}");
            let error = load(MINIMAL, &[(&variable, "0")]).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "configuration key `api.{}`: must be at least 1",
                    key.to_ascii_lowercase()
                )
            );
        }
    }

    #[test]
    fn create_defaults_are_read_and_validated() {
        let text = format!(
            "{MINIMAL}[create]\nsolution_area = \"Azure\"\nsolution_play = \"Migrate and Modernize\"\npartner_role = \"Seller\"\n\
             customer_ids = [{{ profile_type = \"Duns\", id = \"123456789\" }}]\n\
             [create.requirements]\nsolutions = [{{ id = \"s-1\", name = \"Azure Migrate\", type = \"MicrosoftSolution\" }}]\n"
        );
        let settings = load(&text, &[]).unwrap();
        let mut body = serde_json::json!({"name": "x", "solutionPlay": "from a column"});
        crate::create_defaults::apply(&settings.create_defaults, &mut body);
        assert_eq!(body["solutionArea"], "Azure");
        assert_eq!(body["solutionPlay"], "from a column");
        assert_eq!(body["partnerRole"], "Seller");
        assert_eq!(
            body["customerProfile"]["ids"],
            serde_json::json!([{"profileType": "Duns", "id": "123456789"}])
        );
        assert_eq!(
            body["details"]["requirements"]["solutions"][0]["type"],
            "MicrosoftSolution"
        );
        let bad = format!(
            "{MINIMAL}[create]\ncustomer_ids = [{{ profile_type = \"Vat\", id = \"1\" }}]\n"
        );
        let error = load(&bad, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("configuration key `create.customer_ids[0].profile_type`"),
            "{error}"
        );
        let typo = format!("{MINIMAL}[create]\nsolution_areas = \"Azure\"\n");
        let error = load(&typo, &[]).unwrap_err().to_string();
        assert!(error.contains("unknown field `solution_areas`"), "{error}");
    }

    #[test]
    fn insecure_base_url_needs_the_opt_in() {
        let s = load(
            MINIMAL,
            &[
                (
                    "REFERRAL_SYNC__API__BASE_URL",
                    "http://api.example.com/v1.0",
                ),
                ("REFERRAL_SYNC__API__ALLOW_INSECURE", "true"),
            ],
        )
        .unwrap();
        assert!(s.api.allow_insecure);
        load(
            MINIMAL,
            &[("REFERRAL_SYNC__API__BASE_URL", "http://127.0.0.1:9/v1.0")],
        )
        .unwrap();
    }

    #[test]
    fn refresh_flow_builds_the_token_url_from_the_tenant() {
        let s = load(
            "[export]\npath = \"x\"\nentity = \"lead\"\n[auth]\ntenant = \"contoso\"\nclient_id = \"c\"\nrefresh_token_file = \"rt\"\n",
            &[],
        )
        .unwrap();
        match s.auth {
            Some(AuthSettings::RefreshToken {
                token_url,
                resource,
                login,
                ..
            }) => {
                assert_eq!(
                    token_url,
                    "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
                );
                assert_eq!(resource, PARTNER_CENTER_RESOURCE);
                assert_eq!(
                    login,
                    Some(LoginEndpoints {
                        device_code_url:
                            "https://login.microsoftonline.com/contoso/oauth2/v2.0/devicecode"
                                .into(),
                        token_url: "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
                            .into(),
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        // A sovereign cloud's authority, and a v1 token endpoint kept for
        // the refresh flow while login signs in at v2.
        let s = load(
            "[export]\npath = \"x\"\nentity = \"lead\"\n[auth]\ntenant = \"contoso\"\nclient_id = \"c\"\nrefresh_token_file = \"rt\"\nauthority = \"https://login.microsoftonline.us/\"\ntoken_url = \"https://login.microsoftonline.us/contoso/oauth2/token\"\n",
            &[],
        )
        .unwrap();
        match s.auth {
            Some(AuthSettings::RefreshToken {
                token_url, login, ..
            }) => {
                assert_eq!(
                    token_url,
                    "https://login.microsoftonline.us/contoso/oauth2/token"
                );
                let login = login.unwrap();
                assert_eq!(
                    login.token_url,
                    "https://login.microsoftonline.us/contoso/oauth2/v2.0/token"
                );
                assert_eq!(
                    login.device_code_url,
                    "https://login.microsoftonline.us/contoso/oauth2/v2.0/devicecode"
                );
            }
            other => panic!("{other:?}"),
        }
        let error = load(
            "[export]\npath = \"x\"\nentity = \"lead\"\n[auth]\ntenant = \"contoso/../x\"\nclient_id = \"c\"\nrefresh_token_file = \"rt\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("configuration key `auth.tenant`"),
            "{error}"
        );
    }
}
