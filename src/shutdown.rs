//! The shutdown request, as a type passed to whatever must stop (mini-redis's
//! `server::run(listener, shutdown)` pattern).
//!
//! Invariants:
//! - A [`Shutdown`] is requested once and stays requested: [`Shutdown::recv`] returns at
//!   once after that, for every clone, including clones made later.
//! - The process-wide handle is built once, by [`Shutdown::on_signals`]: SIGTERM or SIGINT
//!   requests it (logged once); the signal handlers are installed before it returns, so a
//!   signal that arrives afterwards is never lost.
//! - Dropping the [`Trigger`] also counts as a request: nothing could request it any more,
//!   and a task waiting for it must not wait forever.
//! - It is a `watch<bool>` underneath, so the job modules that take a
//!   `watch::Receiver<bool>` get one with [`Shutdown::watch`] (and a receiver converts
//!   into a `Shutdown`).

use tokio::sync::watch;

/// A cloneable handle that says when to stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that requests the shutdown.
#[derive(Debug)]
pub(crate) struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Requests the shutdown (idempotent).
    pub(crate) fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A handle requested by [`Trigger::fire`] (or by dropping the trigger).
    pub(crate) fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown { rx })
    }

    /// The process's handle: SIGTERM or SIGINT requests it. Must be called inside a tokio
    /// runtime (it spawns the task that waits for the signals).
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: finishing uploads and stopping");
            trigger.fire();
            // Keep the trigger alive: the request stands until the process exits.
            std::future::pending::<()>().await;
        });
        Ok(shutdown)
    }

    #[cfg(test)]
    /// Whether the shutdown was requested.
    pub(crate) fn is_requested(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Waits until the shutdown is requested (at once if it already was). Cancel-safe.
    pub(crate) async fn recv(&mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// The underlying receiver, for the modules that select on `watch::Receiver<bool>`.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

impl From<watch::Receiver<bool>> for Shutdown {
    fn from(rx: watch::Receiver<bool>) -> Shutdown {
        Shutdown { rx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_reaches_every_clone_and_stays() {
        let (trigger, mut a) = Shutdown::new();
        let mut b = a.clone();
        assert!(!a.is_requested());
        trigger.fire();
        a.recv().await;
        b.recv().await;
        let mut later = a.clone();
        later.recv().await;
        assert!(later.is_requested());
    }

    #[tokio::test]
    async fn dropping_the_trigger_counts_as_a_request() {
        let (trigger, mut s) = Shutdown::new();
        drop(trigger);
        s.recv().await;
        assert!(s.is_requested());
    }
}
