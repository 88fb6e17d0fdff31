//! One client connection: handshake, then a reader forwarding frames to the round task and
//! a writer sending what the round task queues for this connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flotilla::protocol::ErrorCode;
use flotilla::protocol::framing::FrameLimit;
use flotilla::round::{CloseReason, ConnectionId};
use flotilla_net::close::{close_code, error_close_code};
use flotilla_net::framed::{FrameReader, FramedError, send_frame};
use quinn::{Connection, ConnectionError, Incoming, ReadError, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Frames queued for one connection before it counts as too slow and is dropped.
pub(crate) const OUTBOUND_QUEUE: usize = 64;

/// How long a closing side waits for its last bytes to be acknowledged.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Bytes moved over all connections.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl Traffic {
    pub(crate) fn snapshot(&self) -> (u64, u64) {
        (self.bytes_in.load(Ordering::Relaxed), self.bytes_out.load(Ordering::Relaxed))
    }
}

/// What a connection task tells the round task.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A client opened its stream.
    Connected { conn: ConnectionId, link: Link },
    /// A frame payload arrived.
    Frame { conn: ConnectionId, payload: Vec<u8> },
    /// The connection is gone, or its stream ended.
    Disconnected { conn: ConnectionId, reason: String },
}

/// What the round task sends a connection's writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// An encoded frame (possibly shared with other connections).
    Frame(Bytes),
    /// Close once everything before has been sent.
    Close(CloseReason),
}

/// The round task's handle on one connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) outbound: mpsc::Sender<Outbound>,
    pub(crate) connection: Connection,
    pub(crate) remote: SocketAddr,
}

/// Everything a connection task needs.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) limit: FrameLimit,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) join_timeout: Duration,
}

/// Completes the handshake, waits for the client's stream, then relays until the end.
pub(crate) async fn serve(incoming: Incoming, conn: ConnectionId, context: Context) {
    let remote = incoming.remote_address();
    let connection = tokio::select! {
        () = context.shutdown.cancelled() => return,
        result = incoming => match result {
            Ok(connection) => connection,
            Err(error) => {
                // Includes clients refused by mutual TLS.
                tracing::warn!(%conn, %remote, %error, "handshake failed; connection refused");
                return;
            }
        },
    };
    let streams = tokio::select! {
        () = context.shutdown.cancelled() => return,
        result = tokio::time::timeout(context.join_timeout, connection.accept_bi()) => result,
    };
    let (send, recv) = match streams {
        Ok(Ok(streams)) => streams,
        Ok(Err(error)) => return tracing::info!(%conn, %remote, %error, "connection closed before its stream opened"),
        Err(_) => {
            tracing::warn!(%conn, %remote, "no stream opened in time; closing");
            return connection.close(error_close_code(ErrorCode::Timeout), b"no stream opened in time");
        }
    };
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
    let link = Link { outbound, connection: connection.clone(), remote };
    if context.inbound.send(Inbound::Connected { conn, link }).await.is_err() {
        return; // Shutting down.
    }
    tokio::join!(write_loop(send, queue, connection.clone()), read_loop(recv, conn, connection, &context),);
}

/// Sends queued frames in order; closes the connection when asked to.
async fn write_loop(mut send: SendStream, mut queue: mpsc::Receiver<Outbound>, connection: Connection) {
    while let Some(outbound) = queue.recv().await {
        match outbound {
            Outbound::Frame(frame) => {
                if let Err(error) = send_frame(&mut send, frame).await {
                    tracing::debug!(%error, "write to a client failed");
                    return;
                }
            }
            Outbound::Close(reason) => {
                let _ = send.finish();
                let _ = tokio::time::timeout(CLOSE_GRACE, send.stopped()).await;
                let text = match &reason {
                    CloseReason::Goodbye => "goodbye".to_string(),
                    CloseReason::Error(code) => format!("refused: {code}"),
                };
                connection.close(close_code(&reason), text.as_bytes());
                return;
            }
        }
    }
}

/// Forwards frames to the round task until the stream or connection ends; unreadable
/// bytes (a frame over the limit, a stream cut inside a frame) close the connection.
async fn read_loop(recv: RecvStream, conn: ConnectionId, connection: Connection, context: &Context) {
    let mut reader = FrameReader::new(recv, context.limit);
    let mut counted = 0;
    let reason = loop {
        let next = reader.next_frame().await;
        context.traffic.bytes_in.fetch_add(reader.bytes_read() - counted, Ordering::Relaxed);
        counted = reader.bytes_read();
        match next {
            Ok(Some(payload)) => {
                if context.inbound.send(Inbound::Frame { conn, payload }).await.is_err() {
                    return;
                }
            }
            Ok(None) => break "client finished its stream".to_string(),
            Err(FramedError::Read(ReadError::ConnectionLost(error))) => break lost_reason(&error),
            Err(error) => {
                let remote = connection.remote_address();
                tracing::warn!(%conn, %remote, %error, "unreadable data from client; closing");
                let text = format!("unreadable data: {error}");
                connection.close(error_close_code(ErrorCode::Malformed), text.as_bytes());
                break text;
            }
        }
    };
    let _ = context.inbound.send(Inbound::Disconnected { conn, reason }).await;
}

fn lost_reason(error: &ConnectionError) -> String {
    match error {
        ConnectionError::LocallyClosed => "closed by the coordinator".into(),
        other => other.to_string(),
    }
}
