//! Hot reload of the templates: on a change in the template folder, or on
//! SIGHUP, the whole set is loaded and checked again (every template, every
//! locale, the sample data) and swapped in at once. A set that fails keeps
//! the old one in place, and the problems are logged. An email being
//! rendered sees one set, old or new, never a mix.
//!
//! Locales are fixed at start: a new locale folder needs a restart.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::check;
use crate::config::Config;
use crate::render::Templates;

/// Changes that come within this long are taken as one.
const SETTLE: Duration = Duration::from_millis(300);

/// Loads and checks the set; swaps it in if it passes.
pub fn reload(config: &Config, current: &ArcSwap<Templates>) -> bool {
    match check::render_samples(config) {
        Ok((templates, samples)) => {
            current.store(Arc::new(templates));
            tracing::info!(renders = samples.len(), "Templates reloaded.");
            true
        }
        Err(problems) => {
            tracing::error!(problems = %problems, "Templates not reloaded: keeping the ones in use.");
            false
        }
    }
}

/// Reloads on every change in the template folder and on SIGHUP, until
/// `shutdown` completes.
pub async fn watch(
    config: Config,
    current: Arc<ArcSwap<Templates>>,
    shutdown: impl Future<Output = ()>,
) {
    let (tx, mut changes) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| {
        w.watch(&config.templates_dir, RecursiveMode::Recursive)
            .map(|()| w)
    });
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, dir = %config.templates_dir.display(), "Cannot watch the templates; reload with SIGHUP.");
            None
        }
    };
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::pin!(shutdown);
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
            () = &mut shutdown => return,
            () = hup => tracing::info!("SIGHUP: reloading the templates."),
            Some(()) = changes.recv() => {
                // Let an editor finish writing; take the burst as one.
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
            }
        }
        let (config, current) = (config.clone(), Arc::clone(&current));
        let _ = tokio::task::spawn_blocking(move || reload(&config, &current)).await;
    }
}
