//! The one MessagePack shape the redeem script answers with: an array of strings, as Redis's
//! scripting engine encodes a Lua array of strings with `cmsgpack.pack` (docs/design.md §6).
//!
//! One bulk reply is parsed by the Redis client in one step and read here without a copy;
//! the same eighteen fields as an array reply cost the client a parse and an allocation each,
//! on every refresh. Anything else (another type, a truncated or over-long value, bytes after
//! the array, more than [`MAX_FIELDS`] strings) is refused: the caller reports it as a store
//! protocol error, never as a verdict.

/// The most strings one reply may carry: the redeem script's longest answer, whose eighteen
/// fields `parse_redemption` destructures (so the two cannot drift apart).
pub const MAX_FIELDS: usize = 18;

/// The strings of one array, borrowed from the reply.
pub struct Strings<'a> {
    items: [&'a [u8]; MAX_FIELDS],
    len: usize,
}

impl<'a> Strings<'a> {
    /// Reads `bytes` as one array of at most [`MAX_FIELDS`] strings (`str` or `bin`, any
    /// width), nothing before or after it.
    pub fn parse(bytes: &'a [u8]) -> Option<Strings<'a>> {
        let mut r = Reader { bytes };
        let len = match r.byte()? {
            b @ 0x90..=0x9f => usize::from(b & 0x0f),
            0xdc => r.be(2)?,
            0xdd => r.be(4)?,
            _ => return None,
        };
        if len > MAX_FIELDS {
            return None;
        }
        let mut items: [&[u8]; MAX_FIELDS] = [&[]; MAX_FIELDS];
        for item in &mut items[..len] {
            let n = match r.byte()? {
                b @ 0xa0..=0xbf => usize::from(b & 0x1f),
                0xc4 | 0xd9 => r.be(1)?,
                0xc5 | 0xda => r.be(2)?,
                0xc6 | 0xdb => r.be(4)?,
                _ => return None,
            };
            *item = r.take(n)?;
        }
        r.bytes.is_empty().then_some(Strings { items, len })
    }

    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.items[..self.len]
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// A big-endian unsigned length of `width` bytes.
    fn be(&mut self, width: usize) -> Option<usize> {
        let b = self.take(width)?;
        Some(b.iter().fold(0usize, |n, &d| (n << 8) | usize::from(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `cmsgpack.pack` makes of a Lua array of strings (lua_cmsgpack.c's encoder).
    fn pack(items: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        match items.len() {
            n @ 0..=15 => out.push(0x90 | n as u8),
            n => {
                out.push(0xdc);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        for s in items {
            match s.len() {
                n @ 0..=31 => out.push(0xa0 | n as u8),
                n @ 32..=0xff => out.extend_from_slice(&[0xd9, n as u8]),
                n @ 0x100..=0xffff => {
                    out.push(0xda);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    out.push(0xdb);
                    out.extend_from_slice(&(n as u32).to_be_bytes());
                }
            }
            out.extend_from_slice(s);
        }
        out
    }

    #[test]
    fn reads_every_string_width_and_both_array_widths() {
        let long = vec![b'x'; 70_000];
        let mid = vec![0u8; 300];
        let items: Vec<&[u8]> = vec![
            b"rotated",
            b"",
            b"7",
            &[0xff, 0x00, 0x80],
            &[b'a'; 32],
            &mid,
            &long,
        ];
        let bytes = pack(&items);
        assert_eq!(
            Strings::parse(&bytes)
                .expect("an array of strings")
                .as_slice(),
            &items[..]
        );
        let eighteen: Vec<&[u8]> = (0..18).map(|_| &b"f"[..]).collect();
        let bytes = pack(&eighteen);
        assert_eq!(bytes[0], 0xdc);
        assert_eq!(
            Strings::parse(&bytes)
                .expect("an array of strings")
                .as_slice(),
            &eighteen[..]
        );
        // bin types and array32, which cmsgpack does not write for these, read the same.
        let bin = [0xdd, 0, 0, 0, 2, 0xc4, 1, b'a', 0xc5, 0, 1, b'b'];
        assert_eq!(
            Strings::parse(&bin)
                .expect("an array of strings")
                .as_slice(),
            &[b"a", b"b"]
        );
    }

    #[test]
    fn refuses_anything_but_one_array_of_strings() {
        let ok = pack(&[b"unknown"]);
        assert!(Strings::parse(&ok).is_some());
        // Truncated anywhere, or with bytes after the array.
        for end in 0..ok.len() {
            assert!(Strings::parse(&ok[..end]).is_none(), "{end}");
        }
        let mut extra = ok.clone();
        extra.push(0xa0);
        assert!(Strings::parse(&extra).is_none());
        // A map, a number, nil, an array holding a number or an array.
        for bytes in [
            &[0x81, 0xa1, b'a', 0xa1, b'b'][..],
            &[0x07],
            &[0xc0],
            &[0x91, 0x07],
            &[0x91, 0x90],
            &[0xdc, 0xff],
        ] {
            assert!(Strings::parse(bytes).is_none(), "{bytes:?}");
        }
        // More strings than the longest answer.
        let nineteen: Vec<&[u8]> = (0..19).map(|_| &b""[..]).collect();
        assert!(Strings::parse(&pack(&nineteen)).is_none());
        // A length past the end, at every width.
        for bytes in [
            &[0x91, 0xa5, b'a'][..],
            &[0x91, 0xd9, 9, b'a'],
            &[0x91, 0xda, 0, 9, b'a'],
            &[0x91, 0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        ] {
            assert!(Strings::parse(bytes).is_none(), "{bytes:?}");
        }
    }
}
