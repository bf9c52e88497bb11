//! referral-sync keeps Microsoft Partner Center referrals in step with a
//! Dynamics 365 export. See `ARCHITECTURE.md` for the map.

pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod create_defaults;
pub mod cron;
pub mod cycle;
pub mod daemon;
pub mod diff;
pub mod exit;
pub mod export;
pub mod lock;
pub mod logging;
pub mod mapping;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod ownership;
pub mod progress;
pub mod service;
pub mod status;
pub mod store;
