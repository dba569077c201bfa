//! Webhook signatures: whether a delivery comes from the shop.
//!
//! Checked on the raw body before anything else reads it: a request that
//! fails is refused (401) and nothing of it is stored or parsed. Shopify
//! signs with `X-Shopify-Hmac-Sha256` and WooCommerce with
//! `X-WC-Webhook-Signature`, both the base64 HMAC-SHA256 of the body under
//! the webhook's secret; a shop's own sender names its header, encoding
//! (hex or base64) and a prefix such as `sha256=`. Several secrets are
//! accepted at once, so that one can be rotated without a gap. The
//! comparison is constant-time (`hmac`'s `verify_slice`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How a signature is written into its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Base64,
    Hex,
}

/// Where a sender puts its signature, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme {
    /// The header, any case.
    pub header: String,
    pub encoding: Encoding,
    /// Written before the signature (`sha256=`); empty for none.
    pub prefix: String,
}

impl Scheme {
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>`.
    pub fn shopify() -> Scheme {
        Scheme {
            header: "X-Shopify-Hmac-Sha256".into(),
            encoding: Encoding::Base64,
            prefix: String::new(),
        }
    }

    /// WooCommerce: `X-WC-Webhook-Signature: <base64>`.
    pub fn woocommerce() -> Scheme {
        Scheme {
            header: "X-WC-Webhook-Signature".into(),
            encoding: Encoding::Base64,
            prefix: String::new(),
        }
    }
}

/// Why a delivery is refused. Said to the sender as 401 only: the reason
/// is for our logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no signature header")]
    Missing,
    #[error("the signature is not in the expected encoding")]
    Malformed,
    #[error("the signature matches no configured secret")]
    Mismatch,
}

/// Checks one endpoint's deliveries against its secrets.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
    /// One keyed HMAC per secret, newest first, cloned per check.
    keys: Vec<HmacSha256>,
}

impl std::fmt::Debug for Verifier {
    /// Never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("secrets", &self.keys.len())
            .finish()
    }
}

impl Verifier {
    pub fn new(scheme: Scheme, secrets: &[impl AsRef<[u8]>]) -> Verifier {
        Verifier {
            scheme,
            keys: secrets
                .iter()
                .map(|s| HmacSha256::new_from_slice(s.as_ref()).expect("HMAC takes any key length"))
                .collect(),
        }
    }

    /// The header this verifier reads.
    pub fn header(&self) -> &str {
        &self.scheme.header
    }

    /// Whether `signature` (the header's value, if the request had one) is
    /// the HMAC of `body` under one of the secrets.
    pub fn verify(&self, signature: Option<&[u8]>, body: &[u8]) -> Result<(), Refused> {
        let value = signature.ok_or(Refused::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| Refused::Malformed)?;
        let value = value
            .trim()
            .strip_prefix(self.scheme.prefix.as_str())
            .ok_or(Refused::Malformed)?;
        let tag = match self.scheme.encoding {
            Encoding::Base64 => BASE64.decode(value).map_err(|_| Refused::Malformed)?,
            Encoding::Hex => hex::decode(value).map_err(|_| Refused::Malformed)?,
        };
        let matched = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(body);
            mac.verify_slice(&tag).is_ok()
        });
        if matched {
            Ok(())
        } else {
            Err(Refused::Mismatch)
        }
    }
}

/// WooCommerce's test delivery when a webhook is saved: `webhook_id=<n>`,
/// form-encoded and unsigned. It carries nothing to apply; refusing it
/// makes WooCommerce count a failure (and disable the webhook after five),
/// so it is answered 200 and stored nowhere.
pub fn is_woocommerce_ping(body: &[u8]) -> bool {
    body.strip_prefix(b"webhook_id=")
        .is_some_and(|id| !id.is_empty() && id.len() <= 20 && id.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check worked out apart (Python's `hmac` and
    /// `base64`): the body `{"id":1}` under the secret `hush` signs as
    /// `VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=`.
    const BODY: &[u8] = br#"{"id":1}"#;
    const SIGNED: &str = "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=";

    #[test]
    fn a_vendor_signature_is_the_base64_hmac_of_the_raw_body() {
        let v = Verifier::new(Scheme::shopify(), &["hush"]);
        assert_eq!(v.verify(Some(SIGNED.as_bytes()), BODY), Ok(()));
        // One byte more (a re-serialised body, a trailing newline) fails.
        assert_eq!(
            v.verify(Some(SIGNED.as_bytes()), b"{\"id\":1}\n"),
            Err(Refused::Mismatch)
        );
        let w = Verifier::new(Scheme::woocommerce(), &["hush"]);
        assert_eq!(w.verify(Some(SIGNED.as_bytes()), BODY), Ok(()));
        assert_eq!(w.header(), "X-WC-Webhook-Signature");
    }

    #[test]
    fn any_of_several_secrets_verifies_for_a_rotation() {
        let v = Verifier::new(Scheme::shopify(), &["new secret", "hush"]);
        assert_eq!(v.verify(Some(SIGNED.as_bytes()), BODY), Ok(()));
        let old_gone = Verifier::new(Scheme::shopify(), &["new secret"]);
        assert_eq!(
            old_gone.verify(Some(SIGNED.as_bytes()), BODY),
            Err(Refused::Mismatch)
        );
    }

    #[test]
    fn a_missing_or_garbled_signature_is_refused_for_what_it_is() {
        let v = Verifier::new(Scheme::shopify(), &["hush"]);
        assert_eq!(v.verify(None, BODY), Err(Refused::Missing));
        assert_eq!(
            v.verify(Some(b"not base64!"), BODY),
            Err(Refused::Malformed)
        );
        assert_eq!(v.verify(Some(&[0xff, 0xfe]), BODY), Err(Refused::Malformed));
        // A truncated tag is no match (never a prefix comparison).
        assert_eq!(
            v.verify(Some(&SIGNED.as_bytes()[..12]), BODY),
            Err(Refused::Mismatch)
        );
        assert_eq!(v.verify(Some(b""), BODY), Err(Refused::Mismatch));
        let none = Verifier::new(Scheme::shopify(), &[] as &[&str]);
        assert_eq!(
            none.verify(Some(SIGNED.as_bytes()), BODY),
            Err(Refused::Mismatch)
        );
    }

    #[test]
    fn a_generic_sender_names_its_header_encoding_and_prefix() {
        // The same HMAC in hex, as GitHub-style senders write it.
        let hex = "5672948d9b0bb8de626568e7e449ed70154217d90c378dcb825cc2135fc649e6";
        let v = Verifier::new(
            Scheme {
                header: "X-Signature".into(),
                encoding: Encoding::Hex,
                prefix: "sha256=".into(),
            },
            &["hush"],
        );
        let value = format!("sha256={hex}");
        assert_eq!(v.verify(Some(value.as_bytes()), BODY), Ok(()));
        assert_eq!(
            v.verify(Some(hex.as_bytes()), BODY),
            Err(Refused::Malformed),
            "the prefix is required"
        );
    }

    #[test]
    fn only_woocommerces_own_ping_passes_unsigned() {
        assert!(is_woocommerce_ping(b"webhook_id=42"));
        for body in [
            &b"webhook_id="[..],
            b"webhook_id=42&x=1",
            b"{\"webhook_id\":42}",
            b"webhook_id=123456789012345678901",
        ] {
            assert!(!is_woocommerce_ping(body), "{body:?}");
        }
    }
}
