//! What the server knows about a client's connection ([`ClientInfo`]), and the boxed error
//! type ([`BoxError`]) the server, the layer and the forwarding client share. No crate imports.

use std::net::SocketAddr;

use http::HeaderValue;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the server knows about the client's connection, put in each request's extensions.
/// Without it (the layer used in another server), `X-Forwarded-For/Proto` are not added.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The peer is in `server.trusted_proxies`: its `X-Forwarded-*` and `Forwarded` headers
    /// are kept and this hop is appended; from any other peer they are replaced.
    pub trusted: bool,
    /// The remote address as this hop's `X-Forwarded-For` entry, formatted once per connection.
    pub(crate) forwarded_for: HeaderValue,
}

impl ClientInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> ClientInfo {
        ClientInfo {
            remote,
            tls,
            trusted: false,
            forwarded_for: ip_value(remote.ip()),
        }
    }

    /// The same, with the peer trusted (or not) to say what earlier hops saw.
    pub fn trusted(mut self, trusted: bool) -> ClientInfo {
        self.trusted = trusted;
        self
    }
}

/// An IP address as a header value, formatted on the stack (one allocation: the value's).
pub(crate) fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let left = {
        let mut w = &mut buf[..];
        let _ = write!(w, "{ip}");
        w.len()
    };
    let len = buf.len() - left;
    HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}
