//! The text and HTML parts encoded for the wire in one pass.
//!
//! lettre, given a body as a `String`, first checks which encoding would
//! suit it (a scan), then makes its line ends CRLF by inserting a `\r`
//! before each bare `\n` (moving the rest of the body each time: the cost
//! grows with lines times size), then quoted-printable encodes it (the
//! `quoted_printable` crate). [`quoted_printable`] does the last two in one
//! pass and gives lettre the result pre-encoded, byte for byte what lettre
//! would have made (the tests compare the two on random text).

/// The longest encoded line, soft line break excluded (RFC 2045 6.7).
const LIMIT: usize = 76;

/// `text` with CRLF line ends, quoted-printable encoded as lettre encodes a
/// `String` body with `Content-Transfer-Encoding: quoted-printable`.
pub fn quoted_printable(text: &str) -> Vec<u8> {
    let input = text.as_bytes();
    let mut qp = Encoder {
        // ASCII text grows by its line ends; other scripts triple.
        out: Vec::with_capacity(input.len() + input.len() / 4),
        on_line: 0,
        backup: 0,
    };
    let mut i = 0;
    while i < input.len() {
        let byte = input[i];
        if PLAIN[usize::from(byte)] && LIMIT - qp.on_line >= 3 {
            // A run of bytes written as they are, up to where a soft line
            // break may be needed: most of an HTML or English part.
            let rest = &input[i..input.len().min(i + LIMIT - qp.on_line - 2)];
            let run = plain_prefix(rest);
            qp.out.extend_from_slice(&rest[..run]);
            qp.on_line += run;
            qp.backup = qp.out.len();
            i += run;
            // The line is two short of full and three plain bytes follow:
            // what appending them one by one comes to, a soft line break
            // after the first (the most common way a long line ends).
            if qp.on_line == LIMIT - 2
                && let Some(&[a, b, c]) = input.get(i..i + 3)
                && [a, b, c].iter().all(|&x| PLAIN[usize::from(x)])
            {
                qp.out.extend_from_slice(&[a, b'=', b'\r', b'\n', b, c]);
                qp.on_line = 2;
                qp.backup = qp.out.len() - 1;
                i += 3;
            }
            continue;
        }
        i += 1;
        match byte {
            // A CRLF, or a bare line feed (lettre makes it CRLF first).
            b'\r' if input.get(i) == Some(&b'\n') => {
                i += 1;
                qp.line_break();
            }
            b'\n' => qp.line_break(),
            b'=' => qp.append(b"=3D"),
            _ if PLAIN[usize::from(byte)] => qp.append(&[byte]),
            // A lone CR among them.
            _ => qp.append(&hex(byte)),
        }
    }
    qp.trailing_space_tab();
    qp.out
}

/// Written as it is: printable ASCII and tab, but `=`.
const PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut byte = b' ';
    while byte <= b'~' {
        plain[byte as usize] = byte != b'=';
        byte += 1;
    }
    plain[b'\t' as usize] = true;
    plain
};

/// How many of the first bytes of `bytes` are [`PLAIN`]: eight at a time
/// while all eight are printable ASCII other than `=` (a tab ends that and
/// is looked up), then one at a time.
fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Bit 7 of some byte set when `x` has a byte below `n` (n <= 128; the
    // bit may not be that byte's, but one is set exactly when one is below).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut n = 0;
    for chunk in bytes.chunks_exact(8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let not_plain = (x & HIGH)
            | below(x, b' ')
            | below(x ^ (ONES * 0x7f), 1)
            | below(x ^ (ONES * u64::from(b'=')), 1);
        if not_plain != 0 {
            break;
        }
        n += 8;
    }
    n + bytes[n..]
        .iter()
        .position(|&b| !PLAIN[usize::from(b)])
        .unwrap_or(bytes.len() - n)
}

fn hex(byte: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [
        b'=',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 0x0f)],
    ]
}

struct Encoder {
    out: Vec<u8>,
    /// Bytes on the current encoded line.
    on_line: usize,
    /// Where the last thing appended starts: a soft line break goes there
    /// when the line is exactly full.
    backup: usize,
}

impl Encoder {
    fn append(&mut self, bytes: &[u8]) {
        if self.on_line + bytes.len() > LIMIT {
            if self.on_line == LIMIT {
                // The last thing appended (at most three bytes: a run never
                // fills a line) moves to the next line.
                let mut last = [0; 3];
                let len = self.out.len() - self.backup;
                last[..len].copy_from_slice(&self.out[self.backup..]);
                self.out.truncate(self.backup);
                self.out.extend_from_slice(b"=\r\n");
                self.out.extend_from_slice(&last[..len]);
                self.on_line = len;
            } else {
                self.out.extend_from_slice(b"=\r\n");
                self.on_line = 0;
            }
        }
        self.out.extend_from_slice(bytes);
        self.on_line += bytes.len();
        self.backup = self.out.len() - bytes.len();
    }

    /// A space or tab must not end an encoded line: written encoded.
    fn trailing_space_tab(&mut self) {
        let encoded: &[u8] = match self.out.last() {
            Some(b' ') => b"=20",
            Some(b'\t') => b"=09",
            _ => return,
        };
        self.on_line -= 1;
        self.out.pop();
        self.append(encoded);
    }

    fn line_break(&mut self) {
        self.trailing_space_tab();
        self.out.extend_from_slice(b"\r\n");
        self.on_line = 0;
    }
}

#[cfg(test)]
mod tests {
    use lettre::message::Body;
    use lettre::message::header::ContentTransferEncoding;
    use proptest::prelude::*;

    use super::*;

    fn lettre(text: &str) -> Vec<u8> {
        Body::new_with_encoding(text.to_owned(), ContentTransferEncoding::QuotedPrintable)
            .unwrap()
            .into_vec()
    }

    #[test]
    fn encodes_as_lettre_does() {
        for text in [
            "",
            "Hello, world!",
            "line\nend \n tab\t\nlast ",
            "cr\ralone\r\n\r\n\rx\r",
            "=3D == =",
            "Բարեւ, Անի։ Ձեր պատվերը ճանապարհին է։\n",
            &"x".repeat(200),
            &format!("{} {}", "y".repeat(75), "z".repeat(80)),
            &format!("{}é{}", "a".repeat(74), "b".repeat(3)),
            &format!("{} \n{}\t", "a".repeat(75), "b".repeat(75)),
        ] {
            assert_eq!(quoted_printable(text), lettre(text), "{text:?}");
        }
    }

    #[test]
    fn plain_prefix_stops_at_the_first_byte_written_encoded() {
        let plain: Vec<u8> = (0..=255u8).filter(|&b| PLAIN[usize::from(b)]).collect();
        assert_eq!(plain.len(), 95, "printable ASCII but `=`, and tab");
        for stop in (0..=255u8).filter(|&b| !PLAIN[usize::from(b)]) {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                bytes[at] = stop;
                assert_eq!(plain_prefix(&bytes), at, "{stop:#x} at {at}");
            }
        }
        // A tab is plain, looked up one at a time.
        assert_eq!(plain_prefix(b"abc\tdefghijk=x"), 12);
        assert_eq!(plain_prefix(b"~ ~ ~ ~ ~ ~ ~ ~ ~"), 17);
    }

    fn text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("a".to_owned()),
            Just("word ".to_owned()),
            Just(" ".to_owned()),
            Just("\t".to_owned()),
            Just("\n".to_owned()),
            Just("\r".to_owned()),
            Just("\r\n".to_owned()),
            Just("=".to_owned()),
            Just("é".to_owned()),
            Just("Բարեւ".to_owned()),
            Just("ሰላም".to_owned()),
            Just("&zwnj;&nbsp;".to_owned()),
            "[a-z]{1,90}",
        ];
        prop::collection::vec(piece, 0..120).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn any_text_encodes_as_lettre_does(text in text()) {
            prop_assert_eq!(quoted_printable(&text), lettre(&text));
        }
    }
}
