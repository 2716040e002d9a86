//! A raw HTTP/2 client (RFC 9113) that writes exact frames, for what a well-behaved client
//! library will not send: more streams than the server allows, bursts of HEADERS + RST_STREAM
//! (rapid reset), header blocks over the server's limit, header values with bytes HTTP forbids.
//!
//! Header blocks are encoded as HPACK literals without indexing and without Huffman coding
//! (RFC 7541 §6.2.2), which every decoder must accept. Frames from the server are read raw; this
//! client does not decode the server's header blocks (use the `h2` crate for answers).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame as it came off the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

pub struct RawH2 {
    stream: TcpStream,
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the pattern bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literals without indexing, names and values as raw bytes.
pub fn header_block(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        hpack_int(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The pseudo-headers and headers of a request, ready for [`header_block`].
pub fn request<'a>(
    method: &'a str,
    path: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a [u8], &'a [u8])> {
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", b"proxy.test"),
    ];
    headers.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    headers
}

impl RawH2 {
    /// Connects, sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: &str) -> RawH2 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut raw = RawH2 { stream };
        raw.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        raw.frame(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn write(&mut self, bytes: &[u8]) {
        // The server may have closed the connection already (GOAWAY): later reads say so.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The bytes of one frame.
    pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.write(&Self::encode(kind, flags, stream, payload))
            .await;
    }

    /// Several frames in one write (so the server reads them together).
    pub async fn burst(&mut self, frames: &[Vec<u8>]) {
        self.write(&frames.concat()).await;
    }

    /// A header block in a HEADERS frame, and CONTINUATION frames when it is larger than the
    /// smallest frame size every server accepts (16 KiB).
    pub async fn headers(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        let end = if end_stream { END_STREAM } else { 0 };
        let parts: Vec<&[u8]> = block.chunks(16 * 1024).collect();
        let last = parts.len().saturating_sub(1);
        let mut frames = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let (kind, flags) = if i == 0 {
                (HEADERS, end)
            } else {
                (CONTINUATION, 0)
            };
            let flags = flags | if i == last { END_HEADERS } else { 0 };
            frames.push(Self::encode(kind, flags, stream, part));
        }
        self.burst(&frames).await;
    }

    pub async fn data(&mut self, stream: u32, bytes: &[u8], end_stream: bool) {
        let flags = if end_stream { END_STREAM } else { 0 };
        self.frame(DATA, flags, stream, bytes).await;
    }

    /// The next frame, answering the server's SETTINGS and PINGs on the way; `None` when the
    /// server closed the connection or nothing came within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Frame> {
        let frame = tokio::time::timeout(timeout, self.read_frame())
            .await
            .ok()??;
        match (frame.kind, frame.flags & ACK) {
            (SETTINGS, 0) => self.frame(SETTINGS, ACK, 0, &[]).await,
            (PING, 0) => {
                let payload = frame.payload.clone();
                self.frame(PING, ACK, 0, &payload).await;
            }
            _ => {}
        }
        Some(frame)
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.stream.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads frames until `done` says so, the connection ends or `timeout` passes with nothing
    /// new; every frame read, in order.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Frame]) -> bool,
    ) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next(timeout).await {
            frames.push(frame);
            if done(&frames) {
                break;
            }
        }
        frames
    }
}
