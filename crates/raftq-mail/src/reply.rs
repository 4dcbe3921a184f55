//! An SMTP reply with its enhanced status code (RFC 3463), as the bridge answers.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: [u8; 3],
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: [u8; 3], text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            text: text.into(),
        }
    }

    /// Appends the reply's line(s) to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let [a, b, c] = self.status;
        // One line; SMTP text must not hold a line break.
        let text: String = self
            .text
            .chars()
            .map(|ch| if ch.is_control() { ' ' } else { ch })
            .collect();
        out.extend_from_slice(format!("{} {a}.{b}.{c} {text}\r\n", self.code).as_bytes());
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.status;
        write!(formatter, "{} {a}.{b}.{c} {}", self.code, self.text)
    }
}
