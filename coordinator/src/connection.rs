//! One client connection: handshake, then a reader forwarding frames to the round task and
//! a writer sending what the round task queues for this connection.
//!
//! # Upload admission
//!
//! Every connection's receive window is small (the idle window) except while one of
//! [`Uploads`]' permits is held: a reader that sees the header of a large frame (an update)
//! waits for a permit, opens its connection's window, reads the frame, closes the window
//! again and hands the frame to the round task together with the permit, which is released
//! once the frame has been folded. Clients waiting for a permit simply stay blocked on flow
//! control, so the coordinator holds at most `permits` updates plus one idle window per
//! connection, whatever the number of clients.

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
use quinn::{Connection, ConnectionError, Incoming, ReadError, RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
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
    /// A frame payload arrived; a large one comes with its upload permit (dropped after use).
    Frame { conn: ConnectionId, payload: Bytes, permit: Option<OwnedSemaphorePermit> },
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

/// The permits of [`Uploads`] and the windows they open and close.
#[derive(Debug, Clone)]
pub(crate) struct Uploads {
    permits: Arc<Semaphore>,
    idle_window: u32,
    upload_window: u32,
}

impl Uploads {
    /// `concurrent` permits; windows from `tuning` (its connection window is the idle one,
    /// its stream window the one opened for an admitted upload).
    pub(crate) fn new(concurrent: usize, tuning: &flotilla_net::transport::Tuning) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrent)),
            idle_window: tuning.receive_window,
            upload_window: tuning.stream_receive_window,
        }
    }

    /// Whether a frame of `len` payload bytes needs a permit: anything that would not fit
    /// in half the idle window.
    fn needs_permit(&self, len: u32) -> bool {
        len > self.idle_window / 2
    }
}

/// Everything a connection task needs.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) limit: FrameLimit,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) join_timeout: Duration,
    pub(crate) uploads: Uploads,
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
        let next = next_admitted(&mut reader, &connection, &context.uploads).await;
        context.traffic.bytes_in.fetch_add(reader.bytes_read() - counted, Ordering::Relaxed);
        counted = reader.bytes_read();
        match next {
            Ok(Some((payload, permit))) => {
                if context.inbound.send(Inbound::Frame { conn, payload, permit }).await.is_err() {
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

/// The next frame; a large one is read only while holding an upload permit, with the
/// connection's receive window opened for it (see the module docs).
async fn next_admitted(
    reader: &mut FrameReader,
    connection: &Connection,
    uploads: &Uploads,
) -> Result<Option<(Bytes, Option<OwnedSemaphorePermit>)>, FramedError> {
    let Some(len) = reader.next_len().await? else { return Ok(None) };
    if !uploads.needs_permit(len) {
        return Ok(reader.next_frame().await?.map(|payload| (payload, None)));
    }
    // The semaphore is never closed, so `ok()` only guards a future edit.
    let permit = uploads.permits.clone().acquire_owned().await.ok();
    connection.set_receive_window(VarInt::from_u32(uploads.upload_window));
    let frame = reader.next_frame().await;
    connection.set_receive_window(VarInt::from_u32(uploads.idle_window));
    Ok(frame?.map(|payload| (payload, permit)))
}

fn lost_reason(error: &ConnectionError) -> String {
    match error {
        ConnectionError::LocallyClosed => "closed by the coordinator".into(),
        other => other.to_string(),
    }
}
