//! referral-sync keeps Microsoft Partner Center referrals in step with a
//! Dynamics 365 export. See `ARCHITECTURE.md` for the map.

pub mod api;
pub mod config;
pub mod diff;
pub mod emulator;
pub mod export;
pub mod lock;
pub mod mapping;
pub mod merge;
pub mod model;
pub mod status;
pub mod store;
