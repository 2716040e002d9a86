//! The Redis store's reading of the redeem script's answer (`store::redis::msgpack` and
//! `parse_redemption`): what a Redis server, or anything answering in its place, sends back for
//! every refresh.
//!
//! Input: the bytes of one bulk reply, as the store receives it.
//!
//! Properties:
//! - `Strings::parse` never panics and agrees with a plain reference reader of a MessagePack
//!   array of `str`/`bin` values (any width), nothing before or after it, at most `MAX_FIELDS`;
//! - the strings it reads, packed again as `cmsgpack.pack` packs a Lua array of strings (the
//!   shortest headers), read back the same;
//! - `parse_redemption` never panics, and answers an error for anything `Strings::parse`
//!   refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use refresh_proxy::internal::store_redis::msgpack::{MAX_FIELDS, Strings};
use refresh_proxy::internal::store_redis::parse_redemption;

/// A reference reader written the obvious way: a cursor and `Vec`s.
fn reference(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<Vec<u8>> {
        let end = at.checked_add(n)?;
        let out = bytes.get(at..end)?.to_vec();
        at = end;
        Some(out)
    };
    let be = |b: Vec<u8>| b.iter().fold(0usize, |n, &d| n * 256 + d as usize);
    let head = take(1)?[0];
    let len = match head {
        0x90..=0x9f => (head - 0x90) as usize,
        0xdc => be(take(2)?),
        0xdd => be(take(4)?),
        _ => return None,
    };
    if len > MAX_FIELDS {
        return None;
    }
    let mut out = Vec::new();
    for _ in 0..len {
        let t = take(1)?[0];
        let n = match t {
            0xa0..=0xbf => (t - 0xa0) as usize,
            0xc4 | 0xd9 => be(take(1)?),
            0xc5 | 0xda => be(take(2)?),
            0xc6 | 0xdb => be(take(4)?),
            _ => return None,
        };
        out.push(take(n)?);
    }
    (at == bytes.len()).then_some(out)
}

/// What `cmsgpack.pack` makes of a Lua array of strings.
fn pack(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    if items.len() < 16 {
        out.push(0x90 | items.len() as u8);
    } else {
        out.push(0xdc);
        out.extend_from_slice(&(items.len() as u16).to_be_bytes());
    }
    for s in items {
        match s.len() {
            n if n < 32 => out.push(0xa0 | n as u8),
            n if n <= 0xff => out.extend_from_slice(&[0xd9, n as u8]),
            n if n <= 0xffff => {
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

fuzz_target!(|data: &[u8]| {
    let read = Strings::parse(data);
    let want = reference(data);
    match (&read, &want) {
        (Some(read), Some(want)) => {
            let got: Vec<Vec<u8>> = read.as_slice().iter().map(|s| s.to_vec()).collect();
            assert_eq!(&got, want);
            let again = pack(read.as_slice());
            let back = Strings::parse(&again).expect("a packed array reads back");
            assert_eq!(back.as_slice(), read.as_slice());
        }
        (None, None) => {
            assert!(
                parse_redemption(data).is_err(),
                "a refused answer is an error"
            );
        }
        _ => panic!(
            "Strings::parse {} where the reference {}",
            if read.is_some() { "read" } else { "refused" },
            if want.is_some() { "read" } else { "refused" }
        ),
    }
    // Whatever it reads, the redemption is a verdict or an error, never a panic.
    let _ = parse_redemption(data);
});
