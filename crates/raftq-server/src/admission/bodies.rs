//! Bytes of request bodies being received, node-wide. tonic reads a unary call's whole
//! body (up to 64 MiB) before the handler runs, so a hundred such calls at once would hold
//! gigabytes before any handler could refuse them. Each data frame of a unary call's body
//! takes its bytes from the node's `max_request_bytes` budget as it arrives, held until
//! the body is dropped (once decoded); a frame past the budget fails the call with
//! RESOURCE_EXHAUSTED, and the rest of its body is never read. A body larger than the
//! whole budget holds all of it, and so is received alone.
//!
//! Streams (send and consume streams) are not counted here: they are read message by
//! message, under their own bounds.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tonic::Status;
use tonic::service::Routes;

use super::{Admission, refuse};

/// Methods whose request is a stream, read message by message.
const STREAMED: [&str; 2] = ["/SendStream", "/Consume"];

/// `routes` with every unary call's body counted against `admission`'s byte budget.
pub fn count_bodies(routes: Routes, admission: Admission) -> Routes {
    let counted =
        tower::util::MapRequestLayer::new(move |request: axum::http::Request<axum::body::Body>| {
            if STREAMED
                .iter()
                .any(|method| request.uri().path().ends_with(method))
            {
                return request;
            }
            let admission = admission.clone();
            request.map(|body| {
                axum::body::Body::new(Counted {
                    body,
                    admission,
                    held: None,
                })
            })
        });
    Routes::from(routes.into_axum_router().layer(counted))
}

/// A body whose bytes hold places in the node's budget until it is dropped.
struct Counted {
    body: axum::body::Body,
    admission: Admission,
    held: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(error))) => {
                return Poll::Ready(Some(Err(Status::from_error(error.into()))));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            // One body never holds more than the whole budget: a larger one goes alone.
            let limit = self.admission.inner.config.max_request_bytes;
            let held = self
                .held
                .as_ref()
                .map_or(0, |held| held.num_permits() as u64);
            let wanted = (data.len() as u64).min(limit.saturating_sub(held));
            let bytes = u32::try_from(wanted).unwrap_or(u32::MAX);
            let budget = &self.admission.inner.request_bytes;
            match budget.clone().try_acquire_many_owned(bytes) {
                Ok(permit) => {
                    metrics::gauge!("raftq_request_bytes_in_flight").increment(f64::from(bytes));
                    match &mut self.held {
                        Some(held) => held.merge(permit),
                        None => self.held = Some(permit),
                    }
                }
                Err(_) => {
                    let limit = self.admission.inner.config.max_request_bytes;
                    return Poll::Ready(Some(Err(refuse(
                        "max_request_bytes",
                        format!(
                            "this node is receiving or serving {limit} bytes of requests \
                             already"
                        ),
                    ))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            metrics::gauge!("raftq_request_bytes_in_flight").decrement(held.num_permits() as f64);
        }
    }
}
