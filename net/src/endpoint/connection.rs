//! One client connection: handshake, then a reader forwarding frames to the round task and
//! a writer sending what the round task queues for this connection.
//!
//! # Admission
//!
//! Before its `Join` is accepted a peer may send one frame of at most [`JOIN_FRAME_MAX`]
//! bytes, within the join timeout; nothing else of it is read until the round task admits it
//! (its `Join` was welcomed), and a refused peer is closed at once. A frame must then arrive
//! within [`Limits::frame_deadline`] of its header (and leave within the same time of being
//! queued), so a peer trickling bytes or never reading holds nothing for long.
//!
//! # Upload admission
//!
//! Every connection's receive window is small (the idle window) except while one of
//! [`Uploads`]' permits is held: a reader that sees the header of a large frame (an update)
//! checks that the round task asked this client for one (an upload credit, granted with each
//! `UpdateRequest` or secure-aggregation message), waits for a permit, opens its connection's
//! window (to the upload window, shrinking as the frame's end nears: QUIC cannot take back
//! credit once given, so the window never reaches past the frame's end by more than the idle
//! window), reads the frame, closes the window again and hands the frame to the round task
//! together with the permit, which is released once the frame has been folded. Clients
//! waiting for a permit simply stay blocked on flow control, so the coordinator holds at most
//! `permits` updates plus one idle window per connection, whatever the number of clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::close::{GOODBYE, error_close_code};
use crate::framed::{FrameReader, FramedError, send_frame};
use bytes::Bytes;
use flotilla_protocol::round::{ConnectionId, Identity};
use flotilla_protocol::wire::framing::{FrameLimit, Payload};
use flotilla_protocol::wire::{ClientMessage, ErrorCode};
use quinn::{Connection, ConnectionError, Incoming, ReadError, RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::gate::{Limits, Ticket};
use super::logs::LogBudget;

/// Time an admitted upload has before its bytes must keep up with `--min-upload-rate`.
const PERMIT_GRACE: Duration = Duration::from_secs(1);
/// How often an admitted upload's progress is checked.
const PROGRESS_CHECK: Duration = Duration::from_millis(250);

/// Largest frame a peer may send before its `Join` is accepted: a `Join` (name, token) fits.
pub(crate) const JOIN_FRAME_MAX: u32 = 4096;

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
    /// A client opened its stream; `identity` from its client certificate, if any.
    Connected { conn: ConnectionId, link: Link, identity: Option<Identity> },
    /// A frame payload arrived; a large one comes with its upload permit (dropped after use).
    Frame { conn: ConnectionId, payload: Payload, permit: Option<OwnedSemaphorePermit> },
    /// The connection is gone, or its stream ended; `misbehaved` when the coordinator closed it
    /// for what the peer did (a missed deadline, unreadable or unasked-for data).
    Disconnected { conn: ConnectionId, reason: String, misbehaved: bool },
}

/// What the round task sends a connection's writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// An encoded frame (possibly shared with other connections).
    Frame(Bytes),
    /// Say goodbye: close once everything before has been sent and acknowledged (a refused
    /// peer is closed at once instead, see [`close_refused`]).
    Goodbye,
}

/// The round task's handle on one connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) outbound: mpsc::Sender<Outbound>,
    pub(crate) connection: Connection,
    pub(crate) remote: SocketAddr,
    /// Lets the reader go past the `Join` frame; sent when the round task welcomed the client.
    pub(crate) admit: Option<oneshot::Sender<()>>,
    /// Large frames the round task asked this client for and has not received yet.
    pub(crate) upload_credits: Arc<AtomicU32>,
}

impl Link {
    /// Lets the reader read past the `Join` frame.
    pub(crate) fn admit(&mut self) {
        if let Some(admit) = self.admit.take() {
            let _ = admit.send(());
        }
    }

    /// One more large frame (an update, a secure-aggregation answer) may arrive.
    pub(crate) fn grant_upload(&self) {
        let _ = self.upload_credits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }
}

/// Closes `connection` now (nothing queued is sent), so that a refused or misbehaving peer
/// cannot hold it open by not reading; `code` and `reason` travel in the close frame.
pub(crate) fn close_refused(connection: &Connection, code: ErrorCode, reason: &str) {
    let text = format!("{code}: {reason}");
    connection.close(error_close_code(code), truncate_utf8(&text, MAX_CLOSE_REASON).as_bytes());
}

/// Longest close reason sent, bytes (it must fit in one packet with the close frame).
const MAX_CLOSE_REASON: usize = 256;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
    pub(crate) fn new(concurrent: usize, tuning: &crate::transport::Tuning) -> Self {
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

    /// The connection's receive window while an admitted frame still lacks `missing` bytes:
    /// the upload window, but never past the frame's end plus the idle window. The credit a
    /// peer holds is the most that was ever read plus the window then, so it stays within
    /// the idle window beyond the frame once the frame is read.
    fn window_for(&self, missing: usize) -> u32 {
        let missing = u32::try_from(missing).unwrap_or(u32::MAX);
        self.upload_window.min(missing.saturating_add(self.idle_window)).max(self.idle_window)
    }
}

/// Everything a connection task needs.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Largest frame a client may send: what its largest legitimate message needs (see
    /// [`upload_limit`]), never the coordinator's own frame limit.
    pub(crate) limit: FrameLimit,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) join_timeout: Duration,
    pub(crate) uploads: Uploads,
    pub(crate) limits: Limits,
    pub(crate) logs: LogBudget,
}

/// Room on top of the model's own frame for an update's header and metrics.
const UPLOAD_OVERHEAD: u32 = 64 << 10;
/// Bytes of one sealed-share entry of a `ShareKeys` message, with room to spare.
const SHARE_ENTRY_BYTES: u32 = 160;

/// The largest frame a client may send: an update is at most the model's frame (a delta is a
/// vector of the model's length; compressed ones are smaller) plus [`UPLOAD_OVERHEAD`]; under
/// secure aggregation a `ShareKeys` message may list one sealed share per client of a session
/// (at most `max_cohort`). Never above `ceiling` (`--max-frame-mib`). A 64 MiB frame of junk
/// is thus refused at its header when the model is 400 KB.
pub fn upload_limit(model_frame: usize, secure_cohort: Option<usize>, ceiling: FrameLimit) -> FrameLimit {
    let update = u32::try_from(model_frame).unwrap_or(u32::MAX).saturating_add(UPLOAD_OVERHEAD);
    let shares = secure_cohort.map_or(0, |cohort| {
        u32::try_from(cohort).unwrap_or(u32::MAX).saturating_mul(SHARE_ENTRY_BYTES).saturating_add(UPLOAD_OVERHEAD)
    });
    FrameLimit::new(update.max(shares).min(ceiling.bytes()))
}

/// Completes the handshake, waits for the client's stream, then relays until the end.
/// `ticket` counts the connection against the limits until this returns.
pub(crate) async fn serve(incoming: Incoming, conn: ConnectionId, context: Context, ticket: Ticket) {
    let remote = incoming.remote_address();
    let connection = tokio::select! {
        () = context.shutdown.cancelled() => return,
        result = tokio::time::timeout(context.join_timeout, incoming) => match result {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                // Includes clients refused by mutual TLS.
                if context.logs.allow(remote.ip()) {
                    tracing::warn!(%conn, %remote, %error, "handshake failed; connection refused");
                }
                return;
            }
            Err(_) => return,
        },
    };
    let ticket = ticket.handshake_done();
    let streams = tokio::select! {
        () = context.shutdown.cancelled() => return,
        result = tokio::time::timeout(context.join_timeout, connection.accept_bi()) => result,
    };
    let (send, recv) = match streams {
        Ok(Ok(streams)) => streams,
        Ok(Err(error)) => return tracing::debug!(%conn, %remote, %error, "connection closed before its stream opened"),
        Err(_) => {
            if context.logs.allow(remote.ip()) {
                tracing::warn!(%conn, %remote, "no stream opened in time; closing");
            }
            return connection.close(error_close_code(ErrorCode::Timeout), b"no stream opened in time");
        }
    };
    let identity = client_certificate(&connection).map(|der| Identity::of_certificate(&der));
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
    let (admit, admitted) = oneshot::channel();
    let upload_credits = Arc::new(AtomicU32::new(0));
    let link = Link {
        outbound,
        connection: connection.clone(),
        remote,
        admit: Some(admit),
        upload_credits: upload_credits.clone(),
    };
    if context.inbound.send(Inbound::Connected { conn, link, identity }).await.is_err() {
        return; // Shutting down.
    }
    let too_slow_to_read = Arc::new(AtomicBool::new(false));
    let reader = Reader {
        conn,
        connection: connection.clone(),
        context: &context,
        upload_credits,
        counted: AtomicU64::new(0),
        too_slow_to_read: too_slow_to_read.clone(),
    };
    let writer = write_loop(send, queue, connection, context.limits, too_slow_to_read);
    tokio::join!(writer, reader.run(recv, admitted));
    drop(ticket);
}

/// The DER bytes of the client's certificate, under mutual TLS.
fn client_certificate(connection: &Connection) -> Option<Vec<u8>> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    chain.first().map(|cert| cert.as_ref().to_vec())
}

/// Sends queued frames in order, each within its deadline; closes the connection when asked
/// to (at once when refusing, after the last frame is acknowledged when saying goodbye).
async fn write_loop(
    mut send: SendStream,
    mut queue: mpsc::Receiver<Outbound>,
    connection: Connection,
    limits: Limits,
    too_slow: Arc<AtomicBool>,
) {
    while let Some(outbound) = queue.recv().await {
        match outbound {
            Outbound::Frame(frame) => {
                let deadline = limits.frame_deadline(frame.len());
                match tokio::time::timeout(deadline, send_frame(&mut send, frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return tracing::debug!(%error, "write to a client failed"),
                    Err(_) => {
                        tracing::debug!(remote = %connection.remote_address(), "client too slow to read; closing");
                        too_slow.store(true, Ordering::Relaxed);
                        connection.close(error_close_code(ErrorCode::Timeout), b"too slow to receive");
                        return;
                    }
                }
            }
            Outbound::Goodbye => {
                let _ = send.finish();
                let _ = tokio::time::timeout(CLOSE_GRACE, send.stopped()).await;
                connection.close(GOODBYE, b"goodbye");
                return;
            }
        }
    }
}

/// The reading half of one connection.
struct Reader<'a> {
    conn: ConnectionId,
    connection: Connection,
    context: &'a Context,
    upload_credits: Arc<AtomicU32>,
    /// Bytes of this connection already added to the traffic counters.
    counted: AtomicU64,
    /// Set by the writer when it closed the connection because the peer did not read.
    too_slow_to_read: Arc<AtomicBool>,
}

/// Why a reader stopped reading.
enum Stop {
    /// Tell the round task, with this reason.
    Ended(String),
    /// The coordinator closed the peer for what it did; tell the round task.
    Refused(String),
    /// The round task is gone (shutting down).
    Shutdown,
}

impl Reader<'_> {
    /// Reads the `Join` frame, waits for admission, then forwards frames until the stream or
    /// the connection ends; a peer over a limit or out of time is closed at once.
    async fn run(self, recv: RecvStream, admitted: oneshot::Receiver<()>) {
        let mut reader = FrameReader::new(recv, FrameLimit::new(JOIN_FRAME_MAX)).split::<ClientMessage>();
        let stop = match self.join(&mut reader, admitted).await {
            Ok(()) => {
                reader.set_limit(self.context.limit);
                self.relay(&mut reader).await
            }
            Err(stop) => stop,
        };
        self.count(&reader);
        let (reason, misbehaved) = match stop {
            Stop::Ended(_) if self.too_slow_to_read.load(Ordering::Relaxed) => {
                ("too slow to receive".to_string(), true)
            }
            Stop::Ended(reason) => (reason, false),
            Stop::Refused(reason) => (reason, true),
            Stop::Shutdown => return,
        };
        let _ = self.context.inbound.send(Inbound::Disconnected { conn: self.conn, reason, misbehaved }).await;
    }

    /// The first frame (at most [`JOIN_FRAME_MAX`] bytes, within the join timeout), then
    /// the round task's admission (within the same timeout).
    async fn join(&self, reader: &mut FrameReader, admitted: oneshot::Receiver<()>) -> Result<(), Stop> {
        let timeout = self.context.join_timeout;
        // The reader's limit is the Join frame's until admission: a larger header is refused.
        let payload = match tokio::time::timeout(timeout, reader.next_payload()).await {
            Ok(Ok(Some(payload))) => payload,
            Ok(Ok(None)) => return Err(Stop::Ended("client finished its stream before joining".into())),
            Ok(Err(error)) => return Err(self.unreadable(error, "before joining")),
            Err(_) => return Err(self.refuse(ErrorCode::Timeout, "did not join in time".into())),
        };
        self.count(reader);
        self.forward(payload, None).await?;
        match tokio::time::timeout(timeout, admitted).await {
            Ok(Ok(())) => Ok(()),
            // The round task refused the peer (and closed it) or is shutting down.
            Ok(Err(_)) => Err(Stop::Ended("not admitted".into())),
            Err(_) => Err(self.refuse(ErrorCode::Timeout, "not admitted in time".into())),
        }
    }

    /// Forwards frames until the stream or the connection ends.
    async fn relay(&self, reader: &mut FrameReader) -> Stop {
        loop {
            let next = self.next_admitted(reader).await;
            self.count(reader);
            match next {
                Ok(Some((payload, permit))) => {
                    if let Err(stop) = self.forward(payload, permit).await {
                        return stop;
                    }
                }
                Ok(None) => return Stop::Ended("client finished its stream".into()),
                Err(Refusal::Framed(error)) => return self.unreadable(error, "after joining"),
                Err(Refusal::Refused(code, reason)) => return self.refuse(code, reason),
            }
        }
    }

    /// The next frame within its deadline; a large one is read only when it was asked for and
    /// while holding an upload permit, with the connection's receive window opened for it
    /// (see the module docs).
    async fn next_admitted(
        &self,
        reader: &mut FrameReader,
    ) -> Result<Option<(Payload, Option<OwnedSemaphorePermit>)>, Refusal> {
        let Some(len) = reader.next_len().await? else { return Ok(None) };
        let deadline = self.context.limits.frame_deadline(len as usize);
        let uploads = &self.context.uploads;
        if !uploads.needs_permit(len) {
            return match tokio::time::timeout(deadline, reader.next_payload()).await {
                Ok(frame) => Ok(frame?.map(|payload| (payload, None))),
                Err(_) => Err(Refusal::too_slow(len, deadline)),
            };
        }
        let asked = self.upload_credits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if asked.is_err() {
            return Err(Refusal::Refused(
                ErrorCode::UnexpectedMessage,
                format!("an upload of {len} bytes not asked for"),
            ));
        }
        // The semaphore is never closed, so `ok()` only guards a future edit.
        let permit = uploads.permits.clone().acquire_owned().await.ok();
        let frame = self.read_permitted(reader, len).await;
        self.connection.set_receive_window(VarInt::from_u32(uploads.idle_window));
        Ok(frame?.map(|payload| (payload, permit)))
    }

    /// The rest of a large frame, read while holding an upload permit: once [`PERMIT_GRACE`]
    /// has passed, the bytes received must keep up with `--min-upload-rate` (checked every
    /// [`PROGRESS_CHECK`]), so a peer that trickles holds a permit for about a second, not for
    /// the whole frame's deadline.
    async fn read_permitted(&self, reader: &mut FrameReader, len: u32) -> Result<Option<Payload>, Refusal> {
        let rate = f64::from(self.context.limits.min_rate.max(1));
        let started = tokio::time::Instant::now();
        let received_before = self.connection.stats().udp_rx.bytes;
        // The window is opened for the frame's rest only: QUIC cannot take back credit it
        // has given, so a window that ran past the frame's end would let the peer send that
        // much more, unasked, after the upload (every client that uploaded once could then
        // fill the coordinator with a window's worth at the next round's start).
        let uploads = &self.context.uploads;
        let mut window = None;
        let connection = &self.connection;
        let mut frame = std::pin::pin!(reader.next_payload_with(|missing| {
            let wanted = uploads.window_for(missing);
            if window != Some(wanted) {
                window = Some(wanted);
                connection.set_receive_window(VarInt::from_u32(wanted));
            }
        }));
        let mut check = tokio::time::interval_at(started + PROGRESS_CHECK, PROGRESS_CHECK);
        loop {
            tokio::select! {
                result = &mut frame => return result.map_err(Refusal::from),
                _ = check.tick() => {
                    let owed = (started.elapsed().saturating_sub(PERMIT_GRACE)).as_secs_f64() * rate;
                    let received = self.connection.stats().udp_rx.bytes.saturating_sub(received_before) as f64;
                    if received < owed.min(f64::from(len)) {
                        let reason = format!(
                            "an upload of {len} bytes fell below {} KiB/s ({received:.0} bytes in {:.1} s)",
                            self.context.limits.min_rate / 1024,
                            started.elapsed().as_secs_f64()
                        );
                        return Err(Refusal::Refused(ErrorCode::Timeout, reason));
                    }
                }
            }
        }
    }

    async fn forward(&self, payload: Payload, permit: Option<OwnedSemaphorePermit>) -> Result<(), Stop> {
        let frame = Inbound::Frame { conn: self.conn, payload, permit };
        self.context.inbound.send(frame).await.map_err(|_| Stop::Shutdown)
    }

    /// Adds the bytes read since the last call to the traffic counters.
    fn count(&self, reader: &FrameReader) {
        let total = reader.bytes_read();
        let before = self.counted.swap(total, Ordering::Relaxed);
        self.context.traffic.bytes_in.fetch_add(total.saturating_sub(before), Ordering::Relaxed);
    }

    /// Closes the connection at once for `code`; logged within the peer's log budget.
    fn refuse(&self, code: ErrorCode, reason: String) -> Stop {
        let remote = self.connection.remote_address();
        if self.context.logs.allow(remote.ip()) {
            tracing::warn!(conn = %self.conn, %remote, %code, %reason, "closing the connection");
        }
        close_refused(&self.connection, code, &reason);
        Stop::Refused(reason)
    }

    /// A read that failed: a lost connection ends quietly, unreadable bytes close it.
    fn unreadable(&self, error: FramedError, when: &str) -> Stop {
        match error {
            FramedError::Read(ReadError::ConnectionLost(error)) => Stop::Ended(lost_reason(&error)),
            error => self.refuse(ErrorCode::Malformed, format!("unreadable data {when}: {error}")),
        }
    }
}

/// Why the next frame was not read.
enum Refusal {
    Framed(FramedError),
    Refused(ErrorCode, String),
}

impl Refusal {
    fn too_slow(len: u32, deadline: Duration) -> Self {
        let reason = format!("a frame of {len} bytes did not arrive within {:.0} s", deadline.as_secs_f64());
        Refusal::Refused(ErrorCode::Timeout, reason)
    }
}

impl From<FramedError> for Refusal {
    fn from(error: FramedError) -> Self {
        Refusal::Framed(error)
    }
}

fn lost_reason(error: &ConnectionError) -> String {
    match error {
        ConnectionError::LocallyClosed => "closed by the coordinator".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_may_send_what_their_largest_message_needs_and_no_more() {
        let ceiling = FrameLimit::DEFAULT;
        assert_eq!(upload_limit(400_000, None, ceiling).bytes(), 400_000 + UPLOAD_OVERHEAD);
        let secure = upload_limit(1000, Some(65_536), ceiling).bytes();
        assert_eq!(secure, 65_536 * SHARE_ENTRY_BYTES + UPLOAD_OVERHEAD);
        assert_eq!(upload_limit(usize::MAX, None, ceiling), ceiling);
    }
}
