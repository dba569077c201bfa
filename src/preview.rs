//! `aftercare preview`: every template, locale and A/B variant rendered with
//! its sample data into a static HTML gallery; with `--serve`, the gallery
//! on a local port, written again on every template change, and the open
//! browser tab reloading by itself.
//!
//! A change that breaks `check` keeps the last good gallery and shows the
//! problems in a banner on every page, so a marketer sees at once what the
//! edit broke.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use handlebars::html_escape;

use crate::check::{Renderable, Sample, render_samples, renderable};
use crate::config::Config;
use crate::reload::FolderWatch;
use crate::render::Problems;

/// `aftercare preview`: a static gallery of every template in every locale.
///
/// `DIR/index.html` links a page per template, locale and sample, which
/// shows the subject and preheader, the HTML part in an iframe
/// (`DIR/<locale>/<template>.html` for the first sample,
/// `<template>--<sample>.html` for the others: the email as sent), the text
/// part and links to the other samples.
pub fn write_gallery(config: &Config, out: &Path) -> Result<PathBuf, PreviewError> {
    let (templates, samples) = render_samples(config).map_err(PreviewError::Templates)?;
    let write = |path: &Path, text: &str| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text)
    };
    let locales = templates.locales().available().to_vec();
    for s in &samples {
        let dir = out.join(&s.locale);
        let file = page_name(&samples, s);
        write(&dir.join(format!("{file}.html")), &s.rendered.html)?;
        // The other samples of this template and locale, to switch to.
        let siblings: String = samples
            .iter()
            .filter(|o| o.renderable.name == s.renderable.name && o.locale == s.locale)
            .map(|o| {
                let name = html_escape(&o.sample);
                if std::ptr::eq(o, s) {
                    format!("<strong>{name}</strong> ")
                } else {
                    format!(
                        "<a href=\"{}.page.html\">{name}</a> ",
                        html_escape(&page_name(&samples, o))
                    )
                }
            })
            .collect();
        let page = format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{template} ({locale})</title>\
             <style>body{{font-family:sans-serif;margin:1.5em}}iframe{{width:100%;height:70vh;\
             border:1px solid #ccc}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:1em}}\
             </style></head><body><p><a href=\"../index.html\">All templates</a></p>\
             <h1>{template} <small>({locale}{fallback})</small></h1>\
             <p class=\"samples\">Samples: {siblings}</p>\
             <p><strong>Subject:</strong> <span class=\"subject\">{subject}</span></p>\
             <p><strong>Preheader:</strong> <span class=\"preheader\">{preheader}</span></p>\
             <h2>HTML</h2><iframe src=\"{file}.html\" title=\"HTML part\"></iframe>\
             <h2>Text</h2><pre class=\"text\">{text}</pre></body></html>",
            template = html_escape(&s.renderable.name),
            file = html_escape(&file),
            locale = html_escape(&s.locale),
            fallback = s
                .fallback
                .as_ref()
                .map_or(String::new(), |f| format!(", from {}", html_escape(f))),
            subject = html_escape(&s.rendered.subject),
            preheader = html_escape(&s.rendered.preheader),
            text = html_escape(&s.rendered.text),
        );
        write(&dir.join(format!("{file}.page.html")), &page)?;
    }
    let mut rows = String::new();
    let renderable = renderable(config);
    for Renderable { name, .. } in &renderable {
        rows.push_str(&format!("<tr><th>{}</th>", html_escape(name)));
        for locale in &locales {
            rows.push_str("<td>");
            for s in samples
                .iter()
                .filter(|s| &s.renderable.name == name && &s.locale == locale)
            {
                rows.push_str(&format!(
                    "<a href=\"{locale}/{file}.page.html\" title=\"{sample}\">{subject}</a><br>",
                    locale = html_escape(locale),
                    file = html_escape(&page_name(&samples, s)),
                    sample = html_escape(&s.sample),
                    subject = html_escape(&s.rendered.subject),
                ));
            }
            rows.push_str("</td>");
        }
        rows.push_str("</tr>");
    }
    let header: String = locales
        .iter()
        .map(|l| format!("<th>{}</th>", html_escape(l)))
        .collect();
    let index = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Email previews</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}td,th{{padding:.4em .8em;\
         text-align:left;border-bottom:1px solid #ddd}}</style></head><body>\
         <h1>Email previews</h1><p>{n} templates in {l} locales, rendered with the sample \
         data in <code>templates/samples/</code>, one line per sample.</p>\
         <table><tr><th>template</th>{header}</tr>{rows}</table></body></html>",
        n = renderable.len(),
        l = locales.len(),
    );
    let index_path = out.join("index.html");
    write(&index_path, &index)?;
    Ok(index_path)
}

/// The file name of a sample's pages: the template's for its first sample
/// (`order_confirmation`), the sample's name after it for the others
/// (`order_confirmation--big-order`).
fn page_name(samples: &[Sample], s: &Sample) -> String {
    let siblings: Vec<&Sample> = samples
        .iter()
        .filter(|o| o.renderable.name == s.renderable.name && o.locale == s.locale)
        .collect();
    let index = match siblings.iter().position(|o| std::ptr::eq(*o, s)) {
        None | Some(0) => return s.renderable.name.clone(),
        Some(index) => index,
    };
    // Names that make the same slug ("Big order", "big order!") or none
    // ("!!!") get their place in the file too, so no page overwrites another.
    let own = slug(&s.sample);
    let shared = siblings[..index].iter().any(|o| slug(&o.sample) == own);
    match (own.is_empty(), shared) {
        (false, false) => format!("{}--{own}", s.renderable.name),
        _ => format!("{}--{own}-{}", s.renderable.name, index + 1),
    }
}

/// `Big order, no name` -> `big-order-no-name`.
fn slug(name: &str) -> String {
    let dashed: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    dashed
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("{0}")]
    Templates(Problems),
    #[error("writing the preview: {0}")]
    Write(#[from] std::io::Error),
}

/// What the server knows about the gallery it serves.
struct Served {
    dir: PathBuf,
    /// Bumped on every rewrite (or failed one): the pages poll it.
    generation: u64,
    /// The problems of the last rewrite that failed, until one passes.
    problems: Option<String>,
}

/// Polls the generation and reloads the page when it moves.
const RELOAD_SCRIPT: &str = "<script>(function(){var g=null;setInterval(function(){\
fetch('/__generation').then(function(r){return r.text()}).then(function(t){\
if(g===null){g=t}else if(t!==g){location.reload()}}).catch(function(){})},700)})()</script>";

/// Serves the gallery in `out` on `listen` until `shutdown`, writing it
/// again on every change under the template folder.
pub async fn serve(
    config: Config,
    out: PathBuf,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), PreviewError> {
    let first = write_gallery(&config, &out);
    let problems = match first {
        Ok(_) => None,
        Err(PreviewError::Templates(p)) => Some(p.to_string()),
        Err(e) => return Err(e),
    };
    let state = Arc::new(RwLock::new(Served {
        dir: out.clone(),
        generation: 0,
        problems,
    }));
    let mut folder = FolderWatch::new(&config.templates_dir).map_err(|e| {
        PreviewError::Write(std::io::Error::other(format!(
            "watching {}: {e}",
            config.templates_dir.display()
        )))
    })?;
    let rewriter = {
        let state = Arc::clone(&state);
        async move {
            loop {
                folder.changed().await;
                let (config, out) = (config.clone(), out.clone());
                let outcome = tokio::task::spawn_blocking(move || write_gallery(&config, &out))
                    .await
                    .unwrap_or_else(|e| Err(PreviewError::Write(std::io::Error::other(e))));
                let mut served = state.write().unwrap_or_else(|p| p.into_inner());
                served.generation += 1;
                served.problems = match outcome {
                    Ok(_) => {
                        tracing::info!("Templates changed: preview written again.");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(problems = %e, "Templates changed and fail check: keeping the last good preview.");
                        Some(e.to_string())
                    }
                };
            }
        }
    };
    let rewriter = tokio::spawn(rewriter);
    let app = Router::new()
        .route("/__generation", get(generation))
        .fallback(get(file))
        .with_state(Arc::clone(&state));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    rewriter.abort();
    served.map_err(PreviewError::Write)
}

/// The address `preview --serve` listens on unless told otherwise.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8025))
}

async fn generation(State(state): State<Arc<RwLock<Served>>>) -> String {
    let served = state.read().unwrap_or_else(|p| p.into_inner());
    served.generation.to_string()
}

/// A file of the gallery; the gallery's own pages (not the emails) get the
/// reload script and, after a failed rewrite, the problems.
async fn file(State(state): State<Arc<RwLock<Served>>>, uri: Uri) -> Response {
    let (dir, problems) = {
        let served = state.read().unwrap_or_else(|p| p.into_inner());
        (served.dir.clone(), served.problems.clone())
    };
    let rel = uri.path().trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    // Only plain names inside the gallery: no `..`, no absolute paths.
    if rel
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == ".." || part.contains('\\'))
    {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let Ok(bytes) = tokio::fs::read(dir.join(rel)).await else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let gallery_page = rel == "index.html" || rel.ends_with(".page.html");
    if !rel.ends_with(".html") {
        return (StatusCode::OK, bytes).into_response();
    }
    let mut html = String::from_utf8_lossy(&bytes).into_owned();
    if gallery_page {
        let mut extra = String::from(RELOAD_SCRIPT);
        if let Some(problems) = problems {
            extra.push_str(&format!(
                "<div class=\"problems\" style=\"position:fixed;top:0;left:0;right:0;\
                 background:#b00020;color:#fff;padding:1em;white-space:pre-wrap;\
                 font-family:monospace\"><strong>check failed; showing the last good \
                 version:</strong>\n{}</div>",
                html_escape(&problems)
            ));
        }
        match html.rfind("</body>") {
            Some(at) => html.insert_str(at, &extra),
            None => html.push_str(&extra),
        }
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Rendered;

    fn sample(name: &str) -> Sample {
        Sample {
            renderable: Renderable {
                template: "welcome".into(),
                variant: None,
                name: "welcome".into(),
            },
            locale: "en".into(),
            sample: name.into(),
            rendered: Rendered {
                subject: String::new(),
                preheader: String::new(),
                html: String::new(),
                text: String::new(),
            },
            fallback: None,
        }
    }

    /// Every sample gets a page of its own, whatever its name.
    #[test]
    fn sample_names_that_make_one_slug_or_none_get_pages_of_their_own() {
        let samples: Vec<Sample> = ["first", "Big order", "big order!", "!!!", "Անուն"]
            .into_iter()
            .map(sample)
            .collect();
        let pages: Vec<String> = samples.iter().map(|s| page_name(&samples, s)).collect();
        assert_eq!(
            pages,
            [
                "welcome",
                "welcome--big-order",
                "welcome--big-order-3",
                "welcome---4",
                "welcome--Անուն",
            ]
        );
    }
}
