//! Helpers shared by the api tests: a throwaway HTTP server on 127.0.0.1
//! and a capture of the log lines written while a test runs.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// Serve `router` on 127.0.0.1 on a free port for the rest of the test.
pub(crate) async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

/// Every log line of the current thread, at every level, while alive.
/// Tests run on tokio's current-thread runtime, so that is all of them.
pub(crate) struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: DefaultGuard,
}

impl LogCapture {
    pub(crate) fn start() -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = SharedWriter(Arc::clone(&buffer));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // A callsite first hit by a thread with no subscriber may have
        // cached "never" as its interest; recompute it now that this
        // thread has one, or lines could be lost when tests run in parallel.
        tracing::callsite::rebuild_interest_cache();
        LogCapture {
            buffer,
            _guard: guard,
        }
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
