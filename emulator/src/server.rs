//! The accept loop. It is written by hand rather than with `axum::serve` so
//! that a request can drop its own connection: each connection task hands
//! its requests a [`ConnectionControl`], and a reset fault uses it to make
//! the task close the socket with `SO_LINGER` 0, which the client sees as a
//! connection reset rather than any HTTP answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// Open connections beyond this wait to be accepted.
const MAX_CONNECTIONS: usize = 1024;

/// How long open connections get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Lets a request drop the connection it arrived on.
#[derive(Clone)]
pub(crate) struct ConnectionControl {
    reset: Arc<Notify>,
}

impl ConnectionControl {
    pub(crate) fn reset(&self) {
        self.reset.notify_one();
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    mut stop_requested: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "serving the Referrals API emulator");
    let (draining, drain) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            stopped = stop_requested.wait_for(|stop| *stop) => {
                if stopped.is_err() {
                    // The admin side is gone; only the caller can stop us.
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    tokio::pin!(stop);

    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = &mut stop => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically out of file descriptors: wait for some to
                    // be released rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tracing::debug!(%peer, "connection accepted");
        connections.spawn(serve_connection(
            stream,
            router.clone(),
            drain.clone(),
            slot,
        ));
    }

    drop(listener);
    tracing::info!(open = connections.len(), "shutting down");
    draining.send_replace(true);
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the grace period; closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    mut drain: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    // A second handle on the socket: hyper owns the stream, but a reset
    // must still be able to set SO_LINGER before the socket is closed. The
    // socket closes when both handles are dropped at the end of this task.
    let socket = SockRef::from(&stream)
        .try_clone()
        .inspect_err(|error| tracing::warn!(%error, "cannot duplicate the socket; resets will be plain closes"))
        .ok();
    let control = ConnectionControl {
        reset: Arc::new(Notify::new()),
    };
    let reset_requested = control.reset.clone();
    let router = TowerToHyperService::new(router);
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(control.clone());
        router.call(request)
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = reset_requested.notified() => {
                if let Some(socket) = &socket
                    && let Err(error) = socket.set_linger(Some(Duration::ZERO))
                {
                    tracing::warn!(%error, "cannot set SO_LINGER; the reset will be a plain close");
                }
                tracing::debug!("dropping the connection on a reset fault");
                return;
            }
            _ = drain.wait_for(|drain| *drain), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}
