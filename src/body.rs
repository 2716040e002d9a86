//! The body types of the layer: a request body that is either the client's stream or the
//! buffered token-endpoint form, and a response body that is either the inner service's or one
//! the layer wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service receives.
    #[project = RequestBodyProj]
    pub enum RequestBody<B> {
        /// The client's body, streamed as it arrives.
        Streaming { #[pin] body: B },
        /// A token-endpoint body the layer has read (bounded by `max_body_bytes`).
        Buffered { #[pin] body: Full<Bytes> },
    }
}

impl<B> RequestBody<B> {
    pub fn streaming(body: B) -> Self {
        RequestBody::Streaming { body }
    }

    pub fn buffered(bytes: Bytes) -> Self {
        RequestBody::Buffered {
            body: Full::new(bytes),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            RequestBodyProj::Streaming { body } => body.poll_frame(cx),
            RequestBodyProj::Buffered { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|f| Ok(f.unwrap_or_else(|never| match never {})))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming { body } => body.is_end_stream(),
            RequestBody::Buffered { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming { body } => body.size_hint(),
            RequestBody::Buffered { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// The response body the layer returns.
    #[project = ResponseBodyProj]
    pub enum ResponseBody<B> {
        /// The inner service's answer, streamed.
        Inner { #[pin] body: B },
        /// An answer the proxy wrote itself (JSON).
        Local { #[pin] body: Full<Bytes> },
        /// The inner service's answer whose first bytes the layer read (to decide capture) and
        /// gives back, followed by the rest as it streams: an answer passed on untouched.
        Prefixed { prefix: Option<Bytes>, body: Pin<Box<B>> },
    }
}

impl<B> ResponseBody<B> {
    pub fn inner(body: B) -> Self {
        ResponseBody::Inner { body }
    }

    pub fn local(body: Full<Bytes>) -> Self {
        ResponseBody::Local { body }
    }

    /// `prefix`, then whatever is left of `body`.
    pub fn prefixed(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        ResponseBody::Prefixed {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            body,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            ResponseBodyProj::Inner { body } => body.poll_frame(cx),
            ResponseBodyProj::Local { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|f| Ok(f.unwrap_or_else(|never| match never {})))),
            ResponseBodyProj::Prefixed { prefix, body } => match prefix.take() {
                Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
                None => body.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Inner { body } => body.is_end_stream(),
            ResponseBody::Local { body } => body.is_end_stream(),
            ResponseBody::Prefixed { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Inner { body } => body.size_hint(),
            ResponseBody::Local { body } => body.size_hint(),
            ResponseBody::Prefixed { prefix, body } => {
                let first = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(first));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(first));
                }
                hint
            }
        }
    }
}
