//! One-click unsubscribe (RFC 8058): signed links, and what they do.
//!
//! A marketing email's link is `<shop.unsubscribe_url>/<token>`, the token
//! being the customer id, the id of the key that signed it, and an
//! HMAC-SHA256 of the customer id under that key:
//! `<customer id, base64url>.<key id>.<signature, base64url>`. A token
//! cannot be forged for another customer, and carries nothing else.
//!
//! Keys rotate: the [`Signer`] signs with its newest key and accepts tokens
//! of every key it holds, so links already sent keep working while a new
//! key takes over, until the old key is dropped. The key id is derived from
//! the key (no numbering to configure) and only says which key to check
//! against. Tokens made before key ids existed (`<id>.<signature>`) are
//! checked against every key held.

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
    /// The signature does not match, or the key that made it is not (or no
    /// longer) one of ours.
    #[error("token signature does not match any accepted key")]
    Forged,
}

/// One signing key and its id.
#[derive(Clone)]
struct Key {
    secret: Vec<u8>,
    /// Six base64url characters: the first bytes of an HMAC of a fixed
    /// label under the key. Says nothing of the key.
    id: String,
}

impl Key {
    fn new(secret: &[u8]) -> Key {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"aftercare-unsubscribe-key-id");
        let id = URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..KEY_ID_BYTES]);
        Key {
            secret: secret.to_vec(),
            id,
        }
    }

    fn mac(&self, customer_id: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"aftercare-unsubscribe:");
        mac.update(customer_id.as_bytes());
        mac
    }
}

/// Bytes of a key id: four, six characters in the token. Two keys with the
/// same id (one chance in four billion) still work: each is tried.
const KEY_ID_BYTES: usize = 4;

/// Bytes of a signature: HMAC-SHA256's, whole.
const SIGNATURE_BYTES: usize = 32;

/// Signs and checks unsubscribe tokens.
#[derive(Clone)]
pub struct Signer {
    /// Newest first: the first signs, every one verifies.
    keys: Vec<Key>,
}

/// Never shows the keys.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer with one key.
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            keys: vec![Key::new(secret)],
        }
    }

    /// Also accepts tokens signed with `older` (it never signs with it).
    pub fn accepting(mut self, older: &[u8]) -> Signer {
        self.keys.push(Key::new(older));
        self
    }

    /// The id of the key that signs, for the logs.
    pub fn key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// How many keys verify tokens.
    pub fn accepted(&self) -> usize {
        self.keys.len()
    }

    /// `<customer id>.<key id>.<signature>`, URL-safe as it is.
    pub fn token(&self, customer_id: &str) -> String {
        let key = &self.keys[0];
        let signature = key.mac(customer_id).finalize().into_bytes();
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(customer_id),
            key.id,
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// The customer a token was made for, if it is genuine: signed with one
    /// of the keys held (the one its key id names; for a token without a
    /// key id, any). Signatures are compared in constant time.
    pub fn verify(&self, token: &str) -> Result<String, BadToken> {
        let mut parts = token.split('.');
        let (id, key_id, signature) = match (parts.next(), parts.next(), parts.next(), parts.next())
        {
            (Some(id), Some(signature), None, None) => (id, None, signature),
            (Some(id), Some(key_id), Some(signature), None) => (id, Some(key_id), signature),
            _ => return Err(BadToken::Malformed),
        };
        let id = URL_SAFE_NO_PAD
            .decode(id)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|id| !id.is_empty())
            .ok_or(BadToken::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .filter(|s| s.len() == SIGNATURE_BYTES)
            .ok_or(BadToken::Malformed)?;
        if key_id.is_some_and(|k| URL_SAFE_NO_PAD.decode(k).map(|b| b.len()) != Ok(KEY_ID_BYTES)) {
            return Err(BadToken::Malformed);
        }
        let genuine = self
            .keys
            .iter()
            .filter(|key| key_id.is_none_or(|k| k == key.id))
            .any(|key| key.mac(&id).verify_slice(&signature).is_ok());
        if genuine {
            Ok(id)
        } else {
            Err(BadToken::Forged)
        }
    }

    /// The link for a customer under `base` (`shop.unsubscribe_url`).
    pub fn url(&self, base: &str, customer_id: &str) -> String {
        format!("{}/{}", base.trim_end_matches('/'), self.token(customer_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token as they were made before key ids: `<id>.<signature>`.
    fn token_without_key_id(secret: &[u8], customer_id: &str) -> String {
        let token = Signer::new(secret).token(customer_id);
        let mut parts = token.split('.');
        let (id, _, signature) = (parts.next(), parts.next(), parts.next());
        format!("{}.{}", id.unwrap(), signature.unwrap())
    }

    #[test]
    fn a_token_names_its_customer_and_nothing_else() {
        let signer = Signer::new(b"secret");
        let token = signer.token("c-1001");
        assert_eq!(signer.verify(&token), Ok("c-1001".to_owned()));
        assert!(!token.contains(['/', '+', '=', '?']), "{token}");
        // Another customer's id with this signature is refused...
        let (_, signed) = token.split_once('.').unwrap();
        let other = format!("{}.{signed}", URL_SAFE_NO_PAD.encode("c-1002"));
        assert_eq!(signer.verify(&other), Err(BadToken::Forged));
        // ...and so is a token signed with another secret.
        let foreign = Signer::new(b"other").token("c-1001");
        assert_eq!(signer.verify(&foreign), Err(BadToken::Forged));
    }

    #[test]
    fn a_token_carries_the_id_of_its_key_not_the_key() {
        let signer = Signer::new(b"secret");
        let token = signer.token("c-1");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        assert_eq!(parts[1], signer.key_id());
        assert_eq!(parts[1].len(), 6);
        // Derived from the key: the same key, the same id; another, another.
        assert_eq!(Signer::new(b"secret").key_id(), signer.key_id());
        assert_ne!(Signer::new(b"secret2").key_id(), signer.key_id());
    }

    #[test]
    fn a_token_of_an_older_key_verifies_after_a_new_key_is_added_first() {
        let old = Signer::new(b"the old key");
        let token = old.token("c-1");
        let rotated = Signer::new(b"the new key").accepting(b"the old key");
        assert_eq!(rotated.verify(&token), Ok("c-1".to_owned()));
        // New links are signed with the new key...
        let fresh = rotated.token("c-1");
        assert!(fresh.contains(Signer::new(b"the new key").key_id()));
        assert_eq!(
            Signer::new(b"the new key").verify(&fresh),
            Ok("c-1".to_owned())
        );
        // ...which the old key alone does not accept.
        assert_eq!(old.verify(&fresh), Err(BadToken::Forged));
    }

    #[test]
    fn a_token_of_a_removed_key_is_refused() {
        let token = Signer::new(b"the old key").token("c-1");
        let without_old = Signer::new(b"the new key").accepting(b"another key");
        assert_eq!(without_old.verify(&token), Err(BadToken::Forged));
        let legacy = token_without_key_id(b"the old key", "c-1");
        assert_eq!(without_old.verify(&legacy), Err(BadToken::Forged));
    }

    #[test]
    fn tokens_without_a_key_id_verify_with_any_key_held() {
        let legacy = token_without_key_id(b"the old key", "c-1");
        assert_eq!(legacy.matches('.').count(), 1);
        assert_eq!(
            Signer::new(b"the old key").verify(&legacy),
            Ok("c-1".to_owned())
        );
        let rotated = Signer::new(b"the new key").accepting(b"the old key");
        assert_eq!(rotated.verify(&legacy), Ok("c-1".to_owned()));
    }

    #[test]
    fn a_token_is_checked_against_the_key_its_id_names() {
        // The old key's signature under the new key's id: refused, though
        // the old key is held.
        let rotated = Signer::new(b"the new key").accepting(b"the old key");
        let old = Signer::new(b"the old key").token("c-1");
        let parts: Vec<&str> = old.split('.').collect();
        let relabelled = format!("{}.{}.{}", parts[0], rotated.key_id(), parts[2]);
        assert_eq!(rotated.verify(&relabelled), Err(BadToken::Forged));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let signer = Signer::new(b"secret");
        let signature = "A".repeat(43);
        for token in [
            "",
            "abc",
            "!!.!!",
            ".",
            "..",
            "YQ.",
            "YQ.!!",
            &format!(".{signature}"),
            &format!("YQ.!!!!!!.{signature}"),
            &format!("YQ.AAAA.{signature}"),
            &format!("YQ.{}.{signature}.x", signer.key_id()),
        ] {
            assert_eq!(signer.verify(token), Err(BadToken::Malformed), "{token:?}");
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
