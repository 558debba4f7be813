//! The one digest type of the resolver: a sha256 manifest digest, 32 bytes inside (the cache
//! holds up to `--cache-max-entries` of them, so not as 71-character strings) and
//! `sha256:<64 lowercase hex digits>` outside, as registries write it.

use std::fmt;

use sha2::Digest as _;

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// `sha256:` and 64 lowercase hex digits; anything else (another algorithm, uppercase,
    /// another length) is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:")?.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Self(out))
    }

    /// The sha256 of `bytes` (a manifest's exact bytes).
    pub fn of(bytes: &[u8]) -> Self {
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = [0u8; 71];
        s[..7].copy_from_slice(b"sha256:");
        for (i, b) in self.0.iter().enumerate() {
            s[7 + 2 * i] = HEX[usize::from(b >> 4)];
            s[8 + 2 * i] = HEX[usize::from(b & 15)];
        }
        // Only ASCII was written.
        f.write_str(std::str::from_utf8(&s).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_round_trips_and_refuses_other_text() {
        let d = "sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c";
        assert_eq!(Digest::parse(d).unwrap().to_string(), d);
        assert_eq!(Digest::parse(&d.to_uppercase()), None);
        assert_eq!(Digest::parse(&d[..70]), None);
        assert_eq!(Digest::parse(&d.replace("sha256", "sha512")), None);
        assert_eq!(Digest::parse(&d.replace('7', "g")), None);
    }

    #[test]
    fn hashes_bytes() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::of(b"").as_bytes()[0], 0xe3);
    }
}
