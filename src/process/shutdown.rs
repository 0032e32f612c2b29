//! Stopping: one stop flag for the whole process, raised by SIGTERM/SIGINT (or, for test
//! harnesses, stdin closing) or by losing leadership; everything that runs waits on it.

use std::{future::Future, sync::Arc};

use futures::future;

/// The process's stop flag. Clones share it.
#[derive(Clone)]
pub struct Stop {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Default for Stop {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        Stop { tx: Arc::new(tx), rx }
    }
}

impl Stop {
    /// Asks everything to stop.
    pub fn request(&self) {
        let _ = self.tx.send(true);
    }

    /// Resolves once a stop has been asked for.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Raises `stop` on SIGTERM/SIGINT, or when stdin reaches end of file if `exit_on_stdin_close`.
pub fn stop_on_signal(stop: &Stop, exit_on_stdin_close: bool) {
    let stop = stop.clone();
    tokio::spawn(async move {
        let stdin_closed = async {
            if exit_on_stdin_close {
                // A plain thread: a blocked read must not hold up the runtime's shutdown.
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                    let _ = tx.send(());
                });
                let _ = rx.await;
            } else {
                future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = stdin_closed => {},
        }
        tracing::info!("signal received; shutting down");
        stop.request();
    });
}

/// Resolves on SIGTERM (what kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
