//! Mailers: where a built message goes.
//!
//! [`Mailer`] is small on purpose, as lettre's `Transport` is: one call per
//! message, and errors that say whether trying again can help. The daemon
//! picks one at start ([`AnyMailer`]); the message itself is built here once,
//! the same for every mailer.

mod eml;
mod encode;
mod smtp;

pub use eml::EmlMailer;
pub use smtp::SmtpMailer;

use jiff::Timestamp;
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::header::{self, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use sha2::{Digest, Sha256};

use crate::render::Rendered;

/// A send that did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MailError {
    /// May succeed later: a 4xx reply, a refused connection, a timeout.
    #[error("transient: {0}")]
    Transient(String),
    /// Will not succeed: a 5xx reply, an address the server refuses.
    #[error("permanent: {0}")]
    Permanent(String),
    /// May have been delivered: the connection broke or timed out while the
    /// server may already have had the message. Retried with the same
    /// Message-ID, so that a duplicate can be recognised downstream.
    #[error("ambiguous: {0}")]
    Ambiguous(String),
}

/// One message ready to hand over.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The email's store key; the `.eml` file name and the `Message-ID`
    /// derive from it.
    pub key: String,
    pub message_id: String,
    pub recipient: String,
    pub message: Message,
}

pub trait Mailer: Send + Sync + 'static {
    /// Hands the message over; returns the server's reply (or a note).
    fn send(&self, email: &Outgoing) -> impl Future<Output = Result<String, MailError>> + Send;
}

/// The mailer chosen by the configuration.
pub enum AnyMailer {
    Eml(EmlMailer),
    Smtp(Box<SmtpMailer>),
    /// Accepts everything, sends nothing: `simulate`.
    Null,
}

impl Mailer for AnyMailer {
    async fn send(&self, email: &Outgoing) -> Result<String, MailError> {
        match self {
            Self::Eml(m) => m.send(email).await,
            Self::Smtp(m) => m.send(email).await,
            Self::Null => Ok("simulated".to_owned()),
        }
    }
}

/// Whether `address` can head a message as its From or Reply-To: one
/// mailbox (`Name <user@example.com>` or a bare address) as [`build`]
/// takes it. The configuration is checked with it before anything runs.
pub fn is_mailbox(address: &str) -> bool {
    address.parse::<Mailbox>().is_ok()
}

/// `<hash-of-key@domain>`: the same for every attempt at one email, so a
/// resend after a crash can be recognised as the same message downstream.
pub fn message_id(key: &str, from: &Mailbox) -> String {
    let hash = Sha256::digest(key.as_bytes());
    format!("<{}@{}>", hex::encode(&hash[..16]), from.email.domain())
}

/// Builds the MIME message: multipart/alternative, text first.
///
/// The recipient's name is customer data: lettre encodes it (RFC 2047) and
/// never lets it break a header line, and the address was validated when the
/// event was decoded. With an `unsubscribe` URL (marketing emails), the
/// message carries `List-Unsubscribe` and `List-Unsubscribe-Post:
/// List-Unsubscribe=One-Click` (RFC 8058).
#[allow(clippy::too_many_arguments)]
pub fn build(
    from: &Mailbox,
    reply_to: Option<&Mailbox>,
    to: &str,
    to_name: Option<&str>,
    rendered: &Rendered,
    message_id: &str,
    date: Timestamp,
    unsubscribe: Option<&str>,
) -> Result<Message, MailError> {
    let address = to
        .parse::<lettre::Address>()
        .map_err(|e| MailError::Permanent(format!("bad recipient address: {e}")))?;
    let name = to_name.map(|n| n.replace(|c: char| c.is_control(), " "));
    // Given, so that lettre does not parse it back out of the From and To
    // headers it has just written (a tenth of building the message).
    let envelope = Envelope::new(Some(from.email.clone()), vec![address.clone()])
        .map_err(|e| MailError::Permanent(format!("cannot build message: {e}")))?;
    let mut builder = Message::builder()
        .envelope(envelope)
        .from(from.clone())
        .to(Mailbox::new(name, address))
        .subject(rendered.subject.replace(|c: char| c.is_control(), " "))
        .message_id(Some(message_id.to_owned()))
        .date(std::time::SystemTime::from(date));
    if let Some(reply_to) = reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    if let Some(url) = unsubscribe {
        if !url.is_ascii() || url.contains(['<', '>', '\r', '\n', ' ']) {
            return Err(MailError::Permanent(format!("bad unsubscribe URL `{url}`")));
        }
        builder = builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ));
    }
    builder
        .multipart(
            MultiPart::alternative()
                .singlepart(part(ContentType::TEXT_PLAIN, &rendered.text))
                .singlepart(part(ContentType::TEXT_HTML, &rendered.html)),
        )
        .map_err(|e| MailError::Permanent(format!("cannot build message: {e}")))
}

/// One part of the message, quoted-printable: the body encoded in one pass
/// (see [`encode`]), the same bytes lettre makes of the `String`.
fn part(content_type: ContentType, body: &str) -> SinglePart {
    let qp = header::ContentTransferEncoding::QuotedPrintable;
    SinglePart::builder()
        .header(content_type)
        .header(qp)
        .body(Body::dangerous_pre_encoded(
            encode::quoted_printable(body),
            qp,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(subject: &str) -> Rendered {
        Rendered {
            subject: subject.to_owned(),
            preheader: "Թեյը ճանապարհին է".to_owned(),
            html: "<p>Բարեւ</p>".to_owned(),
            text: "Բարեւ & <hi>".to_owned(),
        }
    }

    fn from() -> Mailbox {
        "Tea & Kettle <hello@shop.example.com>".parse().unwrap()
    }

    #[test]
    fn marketing_emails_carry_one_click_unsubscribe() {
        let url = "https://shop.example.com/unsubscribe/YzE.c2ln";
        let msg = build(
            &from(),
            None,
            "anna@example.com",
            None,
            &rendered("Hi"),
            "<id@shop.example.com>",
            Timestamp::UNIX_EPOCH,
            Some(url),
        )
        .unwrap();
        let raw = msg.formatted();
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let header = |name: &str| {
            parsed
                .header_raw(name)
                .map(|v| v.split_whitespace().collect::<String>())
        };
        assert_eq!(header("List-Unsubscribe"), Some(format!("<{url}>")));
        assert_eq!(
            header("List-Unsubscribe-Post"),
            Some("List-Unsubscribe=One-Click".to_owned())
        );
        for bad in ["https://x/\r\nBcc: y", "https://x/<a>", "https://ünï/"] {
            let built = build(
                &from(),
                None,
                "a@b.c",
                None,
                &rendered("Hi"),
                "<i@d>",
                Timestamp::UNIX_EPOCH,
                Some(bad),
            );
            assert!(built.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parts_are_the_ones_lettre_makes_of_the_text() {
        let text = "Hi Anna,\n\n  * Oolong  \n    2 x €12.50 = €25.00\n\t\nԲարեւ ".repeat(20);
        for content_type in [ContentType::TEXT_PLAIN, ContentType::TEXT_HTML] {
            let lettre = SinglePart::builder()
                .header(content_type.clone())
                .header(header::ContentTransferEncoding::QuotedPrintable)
                .body(text.clone());
            assert_eq!(part(content_type, &text).formatted(), lettre.formatted());
        }
    }

    #[test]
    fn the_envelope_is_the_one_the_headers_give() {
        let msg = build(
            &from(),
            Some(&"Help <help@shop.example.com>".parse().unwrap()),
            "anna@example.com",
            Some("Anna"),
            &rendered("Hi"),
            "<id@shop.example.com>",
            Timestamp::UNIX_EPOCH,
            None,
        )
        .unwrap();
        let derived = Envelope::try_from(msg.headers()).unwrap();
        assert_eq!(msg.envelope(), &derived);
        assert_eq!(
            msg.envelope().from().map(ToString::to_string).as_deref(),
            Some("hello@shop.example.com")
        );
        assert_eq!(msg.envelope().to(), ["anna@example.com".parse().unwrap()]);
    }

    #[test]
    fn message_id_is_stable_per_key() {
        assert_eq!(
            message_id("c-1/welcome/o-1", &from()),
            message_id("c-1/welcome/o-1", &from())
        );
        assert_ne!(
            message_id("c-1/welcome/o-1", &from()),
            message_id("c-1/welcome/o-2", &from())
        );
        assert!(message_id("k", &from()).ends_with("@shop.example.com>"));
    }

    #[test]
    fn hostile_name_cannot_add_a_header() {
        let msg = build(
            &from(),
            None,
            "anna@example.com",
            Some("Anna\r\nBcc: victim@example.com"),
            &rendered("Ձեր պատվերը\r\nBcc: x@example.com"),
            "<id@shop.example.com>",
            Timestamp::UNIX_EPOCH,
            None,
        )
        .unwrap();
        let raw = String::from_utf8(msg.formatted()).unwrap();
        let headers = raw.split("\r\n\r\n").next().unwrap();
        assert!(!headers.lines().any(|l| l.starts_with("Bcc:")), "{headers}");
        assert!(!headers.contains("List-Unsubscribe"), "{headers}");
        let parsed = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        assert_eq!(parsed.subject(), Some("Ձեր պատվերը Bcc: x@example.com"));
        assert_eq!(parsed.body_text(0).unwrap(), "Բարեւ & <hi>");
        assert_eq!(parsed.body_html(0).unwrap(), "<p>Բարեւ</p>");
    }
}
