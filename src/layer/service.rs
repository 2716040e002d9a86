//! `RefreshGrant<S>`: the middleware service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::layer::Shared;
use crate::classify::{self, Endpoint, Form, FormError};
use crate::error::Error;
use crate::oauth;

/// The middleware; see the [module docs](crate::layer).
#[derive(Debug, Clone)]
pub struct RefreshGrant<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RefreshGrant<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        RefreshGrant { inner, shared }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> Service<Request<B>> for RefreshGrant<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Call the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let endpoint = self
            .shared
            .endpoints
            .load()
            .classify(req.method(), req.uri().path());
        match endpoint {
            Endpoint::Token => {
                let limit = self.shared.max_body_bytes;
                Box::pin(async move {
                    match read_form(req, limit).await {
                        Ok((req, _form)) => inner.call(req).await.map(inner_response),
                        Err(err) => Ok(local_response(err)),
                    }
                })
            }
            Endpoint::Revocation | Endpoint::Introspection | Endpoint::Jwks | Endpoint::Other => {
                let fut = inner.call(req.map(RequestBody::streaming));
                Box::pin(async move { fut.await.map(inner_response) })
            }
        }
    }
}

fn inner_response<B>(res: Response<B>) -> Response<ResponseBody<B>> {
    res.map(ResponseBody::inner)
}

fn local_response<B>(err: Error) -> Response<ResponseBody<B>> {
    oauth::error_response(err).map(ResponseBody::local)
}

/// Reads a token-endpoint request: form content type, body within `limit`, a valid form.
async fn read_form<B>(
    req: Request<B>,
    limit: usize,
) -> Result<(Request<RequestBody<B>>, Form), Error>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !classify::is_form_content_type(req.headers().get(CONTENT_TYPE)) {
        return Err(FormError::ContentType.into());
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::BodyTooLarge);
    }
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(Error::BodyTooLarge),
        Err(_) => return Err(Error::BodyRead),
    };
    let form = Form::parse(&bytes)?;
    Ok((
        Request::from_parts(parts, RequestBody::buffered(bytes)),
        form,
    ))
}
