//! One-click unsubscribe (RFC 8058): signed links, and what they do.
//!
//! A marketing email's link is `<shop.unsubscribe_url>/<token>`, the token
//! being the customer id and an HMAC-SHA256 of it under a secret: from the
//! config (`unsubscribe.secret`), or made once and kept in the store so that
//! every worker sharing it signs alike. A token cannot be forged for another
//! customer, and carries nothing else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused. Both are the client's fault (4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadToken {
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not match")]
    Forged,
}

/// Signs and checks unsubscribe tokens.
#[derive(Clone)]
pub struct Signer {
    secret: Vec<u8>,
}

/// Never shows the secret.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            secret: secret.to_vec(),
        }
    }

    fn mac(&self, customer_id: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"aftercare-unsubscribe:");
        mac.update(customer_id.as_bytes());
        mac
    }

    /// `<customer id, base64url>.<signature, base64url>`: URL-safe as it is.
    pub fn token(&self, customer_id: &str) -> String {
        let signature = self.mac(customer_id).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(customer_id),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// The customer a token was made for, if it is genuine. The signature
    /// is compared in constant time.
    pub fn verify(&self, token: &str) -> Result<String, BadToken> {
        let (id, signature) = token.split_once('.').ok_or(BadToken::Malformed)?;
        let id = URL_SAFE_NO_PAD
            .decode(id)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|id| !id.is_empty())
            .ok_or(BadToken::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| BadToken::Malformed)?;
        self.mac(&id)
            .verify_slice(&signature)
            .map_err(|_| BadToken::Forged)?;
        Ok(id)
    }

    /// The link for a customer under `base` (`shop.unsubscribe_url`).
    pub fn url(&self, base: &str, customer_id: &str) -> String {
        format!("{}/{}", base.trim_end_matches('/'), self.token(customer_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_customer_and_nothing_else() {
        let signer = Signer::new(b"secret");
        let token = signer.token("c-1001");
        assert_eq!(signer.verify(&token), Ok("c-1001".to_owned()));
        assert!(!token.contains(['/', '+', '=', '?']), "{token}");
        // Another customer's id with this signature is refused...
        let (_, signature) = token.split_once('.').unwrap();
        let other = format!("{}.{signature}", URL_SAFE_NO_PAD.encode("c-1002"));
        assert_eq!(signer.verify(&other), Err(BadToken::Forged));
        // ...and so is a token signed with another secret.
        let foreign = Signer::new(b"other").token("c-1001");
        assert_eq!(signer.verify(&foreign), Err(BadToken::Forged));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let signer = Signer::new(b"secret");
        for token in [
            "",
            "abc",
            "!!.!!",
            ".",
            "YQ.",
            "YQ.!!",
            &format!(".{}", "A".repeat(43)),
        ] {
            assert!(signer.verify(token).is_err(), "{token:?}");
        }
    }

    #[test]
    fn urls_join_the_base_and_the_token() {
        let signer = Signer::new(b"secret");
        let url = signer.url("https://shop.example.com/unsubscribe/", "c-1");
        assert_eq!(
            url,
            format!(
                "https://shop.example.com/unsubscribe/{}",
                signer.token("c-1")
            )
        );
    }
}
