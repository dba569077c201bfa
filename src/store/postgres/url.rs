//! What a store URL says: the `postgres` crate's settings, and ours.

use postgres::Config;

use super::{PostgresError, Result, StoreError, TlsSettings, tls_error};

/// What a store URL says besides what the `postgres` crate reads.
#[derive(Debug, Default, PartialEq)]
pub(super) struct UrlParams {
    pub(super) schema: Option<String>,
    pub(super) tls: TlsSettings,
}

/// Whether `url` is a PostgreSQL store URL that [`super::PostgresStore::connect`]
/// can use, or what is wrong with it (see [`super::check_url`]).
pub(in crate::store) fn check_url(url: &str) -> std::result::Result<(), String> {
    parse_url(url).map(|_| ()).map_err(|e| match e {
        StoreError::Postgres(PostgresError::Tls(text)) => text,
        other => other.to_string(),
    })
}

/// The `postgres` crate's settings of `url`, and ours.
pub(super) fn parse_url(url: &str) -> Result<(Config, UrlParams)> {
    let (rest, params) = split_params(url);
    let tls = TlsSettings::from_params(params.sslmode.as_deref(), params.sslrootcert.as_deref())
        .map_err(tls_error)?;
    let config: Config = rest.parse()?;
    let tls = TlsSettings {
        // `sslmode=require` in a key=value string, read by the crate.
        mode: match params.sslmode {
            Some(_) => tls.mode,
            None => config.get_ssl_mode(),
        },
        ..tls
    };
    Ok((
        config,
        UrlParams {
            schema: params.schema,
            tls,
        },
    ))
}

/// The parameters [`split_params`] takes out of a URL.
#[derive(Debug, Default, PartialEq)]
struct Split {
    schema: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Takes the `schema`, `sslmode` and `sslrootcert` parameters out of a URL
/// (the `postgres` crate would refuse the first, and the others' values
/// beyond `require`); other parameters stay as written.
fn split_params(url: &str) -> (String, Split) {
    let mut split = Split::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return (url.to_owned(), split);
    };
    let mut kept = Vec::new();
    for part in query.split('&') {
        let decoded = ::url::form_urlencoded::parse(part.as_bytes()).next();
        match decoded {
            Some((key, value)) if key == "schema" => split.schema = Some(value.into_owned()),
            Some((key, value)) if key == "sslmode" => split.sslmode = Some(value.into_owned()),
            Some((key, value)) if key == "sslrootcert" => {
                split.sslrootcert = Some(value.into_owned());
            }
            _ => kept.push(part),
        }
    }
    if kept.is_empty() {
        (base.to_owned(), split)
    } else {
        (format!("{base}?{}", kept.join("&")), split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_params_takes_only_its_parameters() {
        let schema = |s: &str| Split {
            schema: Some(s.to_owned()),
            ..Split::default()
        };
        assert_eq!(
            split_params("postgres://u@h/db?schema=shop_1&connect_timeout=5"),
            (
                "postgres://u@h/db?connect_timeout=5".to_owned(),
                schema("shop_1")
            )
        );
        assert_eq!(
            split_params("postgresql://u@h/db?options=-c%20x%3Dy&schema=a%20b"),
            (
                "postgresql://u@h/db?options=-c%20x%3Dy".to_owned(),
                schema("a b")
            )
        );
        assert_eq!(
            split_params("postgres://u@h/db?schema=s"),
            ("postgres://u@h/db".to_owned(), schema("s"))
        );
        assert_eq!(
            split_params("host=h user=u schema=s"),
            ("host=h user=u schema=s".to_owned(), Split::default())
        );
        assert_eq!(
            split_params(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x"
            ),
            (
                "postgres://u@h/db?application_name=x".to_owned(),
                Split {
                    sslmode: Some("verify-full".to_owned()),
                    sslrootcert: Some("/etc/ca.pem".to_owned()),
                    ..Split::default()
                }
            )
        );
    }

    #[test]
    fn check_url_names_what_is_wrong() {
        assert_eq!(check_url("postgres://u@h/db?sslmode=require"), Ok(()));
        assert_eq!(check_url("host=h user=u sslmode=require"), Ok(()));
        let err = check_url("postgres://u@h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("unknown sslmode `verify`"), "{err}");
        let err =
            check_url("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/no/ca.pem").unwrap_err();
        assert!(err.contains("sslrootcert /no/ca.pem"), "{err}");
        let err = check_url("postgres://u@h/db?connect_timeout=soon").unwrap_err();
        assert!(err.contains("connect_timeout"), "{err}");
        let (config, params) = parse_url("host=h user=u sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), postgres::config::SslMode::Require);
        assert_eq!(params.tls.mode, postgres::config::SslMode::Require);
    }
}
