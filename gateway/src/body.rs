//! Bodies on their way through: the client's request body (read ahead when
//! short or of unknown length, so it can be sent again; capped at the app's
//! limit as it streams), and the node's answer body (whole when it came with
//! its head, streamed otherwise; holding the request's guards until it
//! ends).

use crate::answer;
use crate::proxy::{BoxError, ProxyBody};
use bytes::Bytes;
use http::HeaderValue;
use http::Response;
use http_body::Body as _;
use http_body_util::BodyExt;
use shoal_api::objects::AppKey;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Bodies up to this size are read before forwarding, so the request can be
/// sent again to another endpoint; larger ones stream through and are not
/// retried once sent.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// Why a request body could not be forwarded: the client's doing, not the
/// node's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    #[error("the request body is larger than the app's limit of {0} bytes")]
    TooLarge(u64),
    #[error("reading the request body failed: {0}")]
    Client(BoxError),
}

impl RequestBodyError {
    /// The one among an error's causes, if any.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<Self>() {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }

    pub fn response(&self, app: &AppKey, request_id: &HeaderValue) -> Response<ProxyBody> {
        match self {
            Self::TooLarge(limit) => answer::too_large(*limit, app, request_id),
            Self::Client(e) => {
                tracing::debug!(app = %app, request_id = ?request_id, error = %e, "reading the request body failed");
                answer::bad_request("reading the request body failed".into(), request_id)
            }
        }
    }
}

/// The body to send: kept whole so it can be sent again, or a stream that
/// can be sent once.
pub(crate) enum Outgoing {
    Replay(Bytes),
    Stream(Option<ProxyBody>),
}

impl Outgoing {
    /// The client's body as it will be sent: refused at once if its length
    /// is over the app's limit; read up to [`REPLAY_LIMIT`] if it is short or
    /// of unknown length, so one that ends within it goes out whole, with its
    /// length, and can be sent again; streamed otherwise.
    pub async fn read<B>(body: Option<Capped<B>>) -> Result<Self, RequestBodyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let Some(mut body) = body else {
            return Ok(Self::Replay(Bytes::new()));
        };
        let length = body.size_hint().exact();
        if length.is_some_and(|n| n > body.limit) {
            return Err(RequestBodyError::TooLarge(body.limit));
        }
        if length.is_some_and(|n| n > REPLAY_LIMIT) {
            return Ok(Self::Stream(Some(body.boxed_proxy())));
        }
        Ok(match body.read_up_to(REPLAY_LIMIT as usize).await? {
            (whole, true) => Self::Replay(whole),
            (first, false) => {
                body.head = Some(first);
                Self::Stream(Some(body.boxed_proxy()))
            }
        })
    }

    pub fn replayable(&self) -> bool {
        matches!(self, Self::Replay(_))
    }

    /// The body's length, if known: read whole, or declared.
    pub fn known_len(&self) -> Option<u64> {
        match self {
            Self::Replay(b) => Some(b.len() as u64),
            Self::Stream(s) => s.as_ref().and_then(|s| s.size_hint().exact()),
        }
    }
}

/// A request body on its way to a node: what was read before forwarding
/// (`head`), then the rest as the client sends it, with the app's limit on
/// the whole.
pub(crate) struct Capped<B> {
    head: Option<Bytes>,
    inner: B,
    seen: u64,
    limit: u64,
}

impl<B> Capped<B>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(inner: B, limit: u64) -> Self {
        Self {
            head: None,
            inner,
            seen: 0,
            limit,
        }
    }

    /// Reads until the body ends or more than `most` bytes have come: the
    /// bytes, and whether they are the whole body.
    async fn read_up_to(&mut self, most: usize) -> Result<(Bytes, bool), RequestBodyError> {
        // Most bodies come in one piece: kept as it is, not copied.
        let mut first = Bytes::new();
        let mut joined = bytes::BytesMut::new();
        let mut len = 0;
        let ended = loop {
            if http_body::Body::is_end_stream(self) {
                break true;
            }
            let Some(frame) = self.frame().await else {
                break true;
            };
            let Ok(data) = frame?.into_data() else {
                // Trailers are not forwarded.
                continue;
            };
            len += data.len();
            if first.is_empty() && joined.is_empty() {
                first = data;
            } else {
                if joined.is_empty() {
                    joined.reserve(len);
                    joined.extend_from_slice(&first);
                }
                joined.extend_from_slice(&data);
            }
            if len > most {
                break false;
            }
        };
        let bytes = if joined.is_empty() {
            first
        } else {
            joined.freeze()
        };
        Ok((bytes, ended))
    }

    fn boxed_proxy(self) -> ProxyBody {
        self.map_err(|e| -> BoxError { Box::new(e) }).boxed()
    }
}

impl<B> http_body::Body for Capped<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(RequestBodyError::Client(e.into())))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.inner.size_hint();
        let Some(head) = &self.head else {
            return inner;
        };
        let n = head.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + n);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + n);
        }
        hint
    }
}

/// A node's answer body, from either client.
pub enum Upstream {
    Own(crate::pool::NodeBody),
    Hyper(crate::pool::PooledBody),
}

impl http_body::Body for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Upstream::Own(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| -> BoxError { Box::new(e) }),
            Upstream::Hyper(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Own(b) => b.is_end_stream(),
            Upstream::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Upstream::Own(b) => b.size_hint(),
            Upstream::Hyper(b) => b.size_hint(),
        }
    }
}

/// A node's answer body as it goes to the client: whole, when all of it
/// came with the head (so it goes out in one write, with a
/// `Content-Length`, even if the node sent it chunked), or streamed on.
pub struct Relayed {
    whole: Option<Bytes>,
    rest: Option<Upstream>,
}

impl Relayed {
    pub(crate) fn new(mut upstream: Upstream) -> Self {
        if let Upstream::Own(b) = &mut upstream
            && let Some(whole) = b.take_whole()
        {
            return Self {
                whole: Some(whole),
                rest: None,
            };
        }
        Self {
            whole: None,
            rest: Some(upstream),
        }
    }
}

impl http_body::Body for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.whole.take() {
            return Poll::Ready((!data.is_empty()).then(|| Ok(http_body::Frame::data(data))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.whole.as_ref().is_none_or(|w| w.is_empty())
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.whole, &self.rest) {
            (Some(w), _) => http_body::SizeHint::with_exact(w.len() as u64),
            (None, Some(r)) => r.size_hint(),
            (None, None) => http_body::SizeHint::with_exact(0),
        }
    }
}

/// What a body's guard is told as the body goes: the bytes sent.
pub(crate) trait Meter {
    fn sent(&mut self, bytes: u64);
}

pin_project_lite::pin_project! {
    /// A body that holds `guard` until it ends or is dropped, and tells it
    /// the bytes that went through.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: http_body::Body<Data = Bytes>, G: Meter> http_body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(guard)) = (frame.data_ref(), this.guard.as_mut()) {
                    guard.sent(data.len() as u64);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.guard.take();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunks(
        sizes: &[usize],
    ) -> StreamBody<impl futures::Stream<Item = Result<http_body::Frame<Bytes>, BoxError>> + Unpin>
    {
        let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = sizes
            .iter()
            .map(|n| Ok(http_body::Frame::data(Bytes::from(vec![b'x'; *n]))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn read(body: Outgoing) -> Vec<u8> {
        match body {
            Outgoing::Replay(b) => b.to_vec(),
            Outgoing::Stream(Some(s)) => s.collect().await.unwrap().to_bytes().to_vec(),
            Outgoing::Stream(None) => panic!("spent"),
        }
    }

    #[tokio::test]
    async fn short_bodies_and_those_of_unknown_length_that_end_early_can_be_sent_again() {
        let none = Outgoing::read::<Full<Bytes>>(None).await.unwrap();
        assert!(none.replayable());
        // Of unknown length: in pieces, ending within the limit, or not.
        let short = Outgoing::read(Some(Capped::new(chunks(&[10, 20, 30]), 1 << 20)))
            .await
            .unwrap();
        assert!(short.replayable());
        assert_eq!(read(short).await.len(), 60);
        let long = Outgoing::read(Some(Capped::new(
            chunks(&[40_000, 40_000, 40_000]),
            1 << 20,
        )))
        .await
        .unwrap();
        assert!(!long.replayable());
        assert_eq!(
            read(long).await.len(),
            120_000,
            "what was read ahead is sent first"
        );
        // Known length over the replay limit: streamed without reading.
        let big = Full::new(Bytes::from(vec![0u8; 100_000]));
        let big = Outgoing::read(Some(Capped::new(big, 1 << 20)))
            .await
            .unwrap();
        assert!(!big.replayable());
    }

    #[tokio::test]
    async fn bodies_over_the_apps_limit_are_refused_by_length_or_as_they_come() {
        let declared = Full::new(Bytes::from(vec![0u8; 2_000]));
        assert!(matches!(
            Outgoing::read(Some(Capped::new(declared, 1_000))).await,
            Err(RequestBodyError::TooLarge(1_000))
        ));
        assert!(matches!(
            Outgoing::read(Some(Capped::new(chunks(&[600, 600]), 1_000))).await,
            Err(RequestBodyError::TooLarge(1_000))
        ));
        // Found over it while streaming, past the part read ahead.
        let s = Outgoing::read(Some(Capped::new(
            chunks(&[40_000, 40_000, 40_000]),
            100_000,
        )))
        .await
        .unwrap();
        let Outgoing::Stream(Some(s)) = s else {
            panic!("not streamed")
        };
        let e = s.collect().await.unwrap_err();
        assert!(matches!(
            RequestBodyError::find(&*e),
            Some(RequestBodyError::TooLarge(100_000))
        ));
    }
}
