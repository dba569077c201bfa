//! Hot reload of the templates: on a change in the template folder, or on
//! SIGHUP, the whole set is loaded and checked again (every template, every
//! locale, the sample data) and swapped in at once. A set that fails keeps
//! the old one in place, and the problems are logged. An email being
//! rendered sees one set, old or new, never a mix.
//!
//! Locales are fixed at start: a new locale folder needs a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::check;
use crate::config::Config;
use crate::observe::Observer;
use crate::render::Templates;

/// Changes that come within this long are taken as one.
const SETTLE: Duration = Duration::from_millis(300);

/// Loads and checks the set; swaps it in if it passes.
pub fn reload(config: &Config, current: &ArcSwap<Templates>, observer: &Observer) -> bool {
    let ok = match check::render_samples(config) {
        Ok((templates, samples)) => {
            current.store(Arc::new(templates));
            tracing::info!(renders = samples.len(), "Templates reloaded.");
            true
        }
        Err(problems) => {
            tracing::error!(problems = %problems, "Templates not reloaded: keeping the ones in use.");
            false
        }
    };
    observer.reload(ok);
    ok
}

/// Changes under a folder, as a stream of "something changed" with bursts
/// (an editor's save is several events) taken as one.
pub struct FolderWatch {
    /// Kept alive for as long as the watch; `None` when the platform
    /// refused (then nothing ever changes).
    watcher: Option<notify::RecommendedWatcher>,
    changes: mpsc::UnboundedReceiver<()>,
}

impl FolderWatch {
    pub fn new(dir: &Path) -> Result<FolderWatch, notify::Error> {
        let (tx, changes) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(dir, RecursiveMode::Recursive)?;
        Ok(FolderWatch {
            watcher: Some(watcher),
            changes,
        })
    }

    /// A watch that never fires.
    pub fn none() -> FolderWatch {
        let (_, changes) = mpsc::unbounded_channel();
        FolderWatch {
            watcher: None,
            changes,
        }
    }

    /// Waits for a change, then for the burst to settle.
    pub async fn changed(&mut self) {
        if self.watcher.is_none() || self.changes.recv().await.is_none() {
            return std::future::pending().await;
        }
        // Let an editor finish writing; take the burst as one.
        tokio::time::sleep(SETTLE).await;
        while self.changes.try_recv().is_ok() {}
    }
}

/// Reloads on every change in the template folder and on SIGHUP, until
/// `shutdown` is cancelled.
pub async fn watch(
    config: Config,
    current: Arc<ArcSwap<Templates>>,
    observer: Arc<Observer>,
    shutdown: CancellationToken,
) {
    let mut folder = FolderWatch::new(&config.templates_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, dir = %config.templates_dir.display(), "Cannot watch the templates; reload with SIGHUP.");
        FolderWatch::none()
    });
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hup = async {
            #[cfg(unix)]
            if let Some(h) = hangup.as_mut() {
                h.recv().await;
                return;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hup => tracing::info!("SIGHUP: reloading the templates."),
            () = folder.changed() => {}
        }
        let (config, current, observer) =
            (config.clone(), Arc::clone(&current), Arc::clone(&observer));
        let _ = tokio::task::spawn_blocking(move || reload(&config, &current, &observer)).await;
    }
}
