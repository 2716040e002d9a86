//! The endpoint under load and the requests sent to it.

use std::net::{SocketAddr, ToSocketAddrs};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;

/// How the client authenticates at the token endpoint.
pub enum ClientAuth {
    /// `Authorization: Basic …`, the header value precomputed.
    Basic(HeaderValue),
    /// A public client: `client_id` in the body.
    Public(String),
    /// Nothing (the server does not ask).
    None,
}

impl ClientAuth {
    /// RFC 6749 §2.3.1: the client identifier and secret are encoded with the
    /// application/x-www-form-urlencoded algorithm before they are joined with a colon and
    /// base64-encoded.
    pub fn basic(client_id: &str, secret: &str) -> ClientAuth {
        let pair = format!("{}:{}", form_encode(client_id), form_encode(secret));
        let value = format!("Basic {}", STANDARD.encode(pair));
        ClientAuth::Basic(HeaderValue::from_str(&value).expect("base64 is a valid header value"))
    }
}

/// What each request is.
pub enum Mode {
    /// `POST` a refresh grant with the chain's current token.
    Refresh {
        auth: ClientAuth,
        scope: Option<String>,
    },
    /// `GET` the URL (no token, no authentication): a baseline on the same generator.
    Get,
}

/// The endpoint, resolved once.
pub struct Target {
    pub addr: SocketAddr,
    pub url: String,
    host: HeaderValue,
    path: Uri,
    pub mode: Mode,
}

impl Target {
    pub fn resolve(url: &str, mode: Mode) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--url {url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("--url {url:?}: only http:// is supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url {url:?} has no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = (authority.host(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", authority.host()))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", authority.host()))?;
        let path: Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("--url {url:?}: bad path: {e}"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("--url {url:?}: bad host: {e}"))?;
        Ok(Target {
            addr,
            url: url.to_owned(),
            host,
            path,
            mode,
        })
    }

    pub fn is_refresh(&self) -> bool {
        matches!(self.mode, Mode::Refresh { .. })
    }

    /// The next request: a refresh grant with `token`, or a plain GET.
    pub fn request(&self, token: &str) -> Request<Full<Bytes>> {
        let builder = Request::builder()
            .uri(self.path.clone())
            .header(HOST, self.host.clone());
        let request = match &self.mode {
            Mode::Get => builder.method(Method::GET).body(Full::new(Bytes::new())),
            Mode::Refresh { auth, scope } => {
                let mut body = String::with_capacity(64 + token.len());
                body.push_str("grant_type=refresh_token&refresh_token=");
                body.push_str(&form_encode(token));
                if let Some(scope) = scope {
                    body.push_str("&scope=");
                    body.push_str(&form_encode(scope));
                }
                let mut builder = builder.method(Method::POST).header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                match auth {
                    ClientAuth::Basic(value) => {
                        builder = builder.header(AUTHORIZATION, value.clone());
                    }
                    ClientAuth::Public(id) => {
                        body.push_str("&client_id=");
                        body.push_str(&form_encode(id));
                    }
                    ClientAuth::None => {}
                }
                builder.body(Full::new(Bytes::from(body)))
            }
        };
        request.expect("the method, URI and headers were checked when the target was resolved")
    }
}

/// application/x-www-form-urlencoded encoding of one value.
pub fn form_encode(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
    {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(form_urlencoded::byte_serialize(s.as_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_encodes_before_base64() {
        let ClientAuth::Basic(value) = ClientAuth::basic("www", "Secr3t!") else {
            panic!("basic")
        };
        // base64("www:Secr3t%21")
        assert_eq!(value, "Basic d3d3OlNlY3IzdCUyMQ==");
    }

    #[test]
    fn tokens_are_form_encoded_only_when_needed() {
        assert_eq!(form_encode("abc.1.XYZ-_"), "abc.1.XYZ-_");
        assert_eq!(form_encode("a+b/c="), "a%2Bb%2Fc%3D");
        assert_eq!(form_encode("read write"), "read+write");
    }
}
