//! One handle into the driver for every shell (the gRPC KV and admin
//! services, the configuration engine behind the Config service and the HTTP
//! API): it numbers requests from one per-process counter, hands them to the
//! driver and awaits the one answer, or opens a watch's stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use meridian_core::types::{ClientRequest, ClientResponse, MetaOp, RequestId};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{Input, ReplyTo};
use crate::reason::Reason;

/// The driver is gone: the node is stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node is stopping")]
pub struct Stopped;

#[derive(Clone)]
pub struct CoreClient {
    inputs: mpsc::Sender<Input>,
    /// Request ids only need to be unique within this process; every shell
    /// draws from this one counter.
    next_req: Arc<AtomicU64>,
}

impl CoreClient {
    pub fn new(inputs: mpsc::Sender<Input>) -> CoreClient {
        CoreClient {
            inputs,
            next_req: Arc::new(AtomicU64::new(1)),
        }
    }

    /// A fresh request id.
    pub fn next_req(&self) -> RequestId {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    /// One request and its answer (a core error is an answer, not an `Err`).
    pub async fn call(&self, request: ClientRequest) -> Result<ClientResponse, Stopped> {
        let (tx, rx) = oneshot::channel();
        let input = Input::Client {
            req: self.next_req(),
            request,
            reply: ReplyTo::Once(tx),
        };
        self.inputs.send(input).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Edit the metadata document, answered once the edit is durable in
    /// this region; a refusal as its stable reason and message (for the
    /// Auth service and the configuration engine alike).
    pub async fn edit_meta(&self, op: MetaOp) -> Result<(), (Reason, String)> {
        match self.call(ClientRequest::Meta(op)).await {
            Ok(ClientResponse::Done) => Ok(()),
            Ok(ClientResponse::Error(code)) => Err((Reason::from(code), code.to_string())),
            Ok(other) => Err((
                Reason::Internal,
                format!("unexpected response from the core: {other:?}"),
            )),
            Err(Stopped) => Err((Reason::ShuttingDown, "the node is stopping".into())),
        }
    }

    /// Open a watch: its request id (to cancel it) and the stream of its
    /// answers, at most `buffer` waiting (the core drops a watch whose
    /// stream is full).
    pub async fn watch(
        &self,
        request: ClientRequest,
        buffer: usize,
    ) -> Result<(RequestId, mpsc::Receiver<ClientResponse>), Stopped> {
        let req = self.next_req();
        let (tx, rx) = mpsc::channel(buffer);
        let input = Input::Client {
            req,
            request,
            reply: ReplyTo::Stream(tx),
        };
        self.inputs.send(input).await.map_err(|_| Stopped)?;
        Ok((req, rx))
    }

    /// Cancel watch `req` without waiting (from `Drop`): if the driver's
    /// queue is full or gone, the core drops the watch anyway once its
    /// stream's receiver is gone.
    pub fn cancel_watch(&self, req: RequestId) {
        let _ = self.inputs.try_send(Input::CancelWatch { req });
    }

    /// Any other input to the driver (status, admin requests).
    pub async fn send(&self, input: Input) -> Result<(), Stopped> {
        self.inputs.send(input).await.map_err(|_| Stopped)
    }
}
