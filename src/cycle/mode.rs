//! What a cycle may do with Partner Center and the store, decided once by
//! whoever builds the cycle, and the one way its store writes go.

use std::sync::{Arc, Mutex};

use crate::api::ApiClient;
use crate::store::Store;

/// How far a cycle goes.
#[derive(Clone)]
pub enum Mode {
    /// A plan that does not read the service either: records whose patch
    /// needs the live referral say so instead.
    Offline,
    /// A plan made against the service as it is: read, never written; the
    /// store is read and left as it was.
    Plan(ApiClient),
    /// Read, send, and record what was acknowledged.
    Sync(ApiClient),
}

impl Mode {
    /// The client the cycle reads the service with.
    pub fn client(&self) -> Option<&ApiClient> {
        match self {
            Mode::Offline => None,
            Mode::Plan(client) | Mode::Sync(client) => Some(client),
        }
    }

    /// The client the cycle writes with: only a sync has one.
    pub fn writer(&self) -> Option<&ApiClient> {
        match self {
            Mode::Sync(client) => Some(client),
            Mode::Offline | Mode::Plan(_) => None,
        }
    }

    /// Whether the cycle writes; a dry run (offline or not) does not.
    pub fn writes(&self) -> bool {
        matches!(self, Mode::Sync(_))
    }
}

/// The store lock was poisoned by a panic.
#[derive(Debug)]
pub struct Poisoned;

/// Every store write of a cycle: each runs in a sync and none in a dry
/// run, so no step asks which it is.
#[derive(Clone)]
pub struct Recorder {
    store: Arc<Mutex<Store>>,
    writes: bool,
}

impl Recorder {
    pub fn new(store: Arc<Mutex<Store>>, mode: &Mode) -> Recorder {
        Recorder {
            store,
            writes: mode.writes(),
        }
    }

    /// Run `write` on the store; in a dry run, do nothing and give
    /// `T::default()`.
    pub fn write<T: Default, E: From<Poisoned>>(
        &self,
        write: impl FnOnce(&Store) -> Result<T, E>,
    ) -> Result<T, E> {
        if !self.writes {
            return Ok(T::default());
        }
        let store = self.store.lock().map_err(|_| E::from(Poisoned))?;
        write(&store)
    }
}
