//! Text from outside, cut to a bounded length before it is echoed.
//!
//! A reason for rejecting an event may quote the event (an unknown type, a
//! JSON error), and an event may be as large as the source allows: quoted
//! whole, one bad event makes a log line or a dead-letter record of
//! megabytes. Everything that echoes input goes through [`clip`].

use std::borrow::Cow;

/// What is appended to a clipped text.
const ELLIPSIS: &str = "…";

/// `text` if it has at most `max_bytes` bytes; else its longest prefix
/// that, with an ellipsis, fits in `max_bytes` (cut on a character
/// boundary).
pub fn clip(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    let end = floor_char_boundary(text, max_bytes.saturating_sub(ELLIPSIS.len()));
    Cow::Owned(format!("{}{ELLIPSIS}", &text[..end]))
}

/// At most `max_bytes` of `bytes`, not cutting a UTF-8 character in two
/// (when the bytes are UTF-8 there): for raw events kept only in part.
pub fn prefix(bytes: &[u8], max_bytes: usize) -> &[u8] {
    if bytes.len() <= max_bytes {
        return bytes;
    }
    let mut end = max_bytes;
    // Back off over continuation bytes (at most three).
    while end > 0 && max_bytes - end < 3 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    if bytes[end] & 0xC0 == 0x80 {
        // Not UTF-8 here: any cut will do.
        end = max_bytes;
    }
    &bytes[..end]
}

fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut end = index.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_left_alone() {
        assert!(matches!(clip("abc", 3), Cow::Borrowed("abc")));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_an_ellipsis() {
        let long = "ա".repeat(100);
        let cut = clip(&long, 20);
        assert!(cut.len() <= 20, "{cut}");
        assert!(cut.ends_with('…'));
        assert_eq!(cut, format!("{}…", "ա".repeat(8)));
    }

    #[test]
    fn a_prefix_does_not_split_a_character() {
        let text = "aաb".as_bytes(); // 'ա' is two bytes, at 1..3
        assert_eq!(prefix(text, 2), b"a");
        assert_eq!(prefix(text, 3), "aա".as_bytes());
        assert_eq!(prefix(text, 10), text);
        // Not UTF-8: cut where asked.
        assert_eq!(prefix(&[0x80; 8], 4), &[0x80; 4]);
    }
}
