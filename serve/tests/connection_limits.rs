//! The API's accept loop on loopback: connections over a limit are closed when accepted, a
//! connection that does not finish a request's headers in time is closed, and requests go on
//! being served beside them.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure here is a test failure")]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use flotilla_serve::ConnectionLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// A server of `GET /healthz` within `limits`; its address and its stop.
async fn server(limits: ConnectionLimits) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move { flotilla_serve::serve(listener, None, app, limits, shutdown).await.unwrap() });
    (addr, stop, task)
}

/// A connection from `from` (any 127.x address is this machine's) that sends the start of a
/// request and never finishes it. The write may fail: a connection over a limit is closed as
/// soon as the server accepts it, which [`closed_within`] then sees.
async fn silent(addr: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    stream
}

/// A server within `limits` and a silent connection from each of `sources`.
async fn server_holding(
    limits: ConnectionLimits,
    sources: impl IntoIterator<Item = String>,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>, Vec<TcpStream>) {
    let (addr, stop, task) = server(limits).await;
    let mut held = Vec::new();
    for from in sources {
        held.push(silent(addr, &from).await);
    }
    (addr, stop, task, held)
}

/// Whether the server has closed `stream` within `wait` (end of stream or a reset, after any
/// bytes it sent first).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One whole request from `from`; the response's status line, or what went wrong (a
/// connection over a limit is closed, or reset, before it is answered).
async fn healthz(addr: SocketAddr, from: &str) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let request = async {
        let mut stream = socket.connect(addr).await?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        std::io::Result::Ok(response)
    };
    match tokio::time::timeout(Duration::from_secs(5), request).await {
        Ok(Ok(response)) => response.lines().next().unwrap_or("closed unanswered").to_owned(),
        Ok(Err(error)) => format!("failed: {error}"),
        Err(_) => "timed out".to_owned(),
    }
}

/// [`healthz`] again every 50 ms until it is answered 200 or `wait` has passed; the last
/// outcome. (A connection's place is given back when the server notices its close: a moment
/// after the peer does.)
async fn healthz_within(addr: SocketAddr, from: &str, wait: Duration) -> String {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let outcome = healthz(addr, from).await;
        if outcome == "HTTP/1.1 200 OK" || tokio::time::Instant::now() >= deadline {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_its_share_and_silent_connections_time_out() {
    let limits =
        ConnectionLimits { max_connections: 100, max_per_address: 3, header_read_timeout: Duration::from_secs(2) };
    let (addr, stop, task, mut held) = server_holding(limits, (0..3).map(|_| "127.0.0.1".to_owned())).await;
    // The silent ones are held until the header-read timeout…
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(100)).await, "closed before its timeout");
    }
    // The fourth from the same address is closed at once; another address is served.
    let mut over = silent(addr, "127.0.0.1").await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await, "a connection over the address's limit stays open");
    assert_eq!(healthz(addr, "127.0.0.2").await, "HTTP/1.1 200 OK");
    // … then closed.
    for stream in &mut held {
        assert!(closed_within(stream, Duration::from_secs(5)).await, "a silent connection outlived its timeout");
    }
    // Their places are given back: the address is served again.
    assert_eq!(healthz_within(addr, "127.0.0.1", Duration::from_secs(3)).await, "HTTP/1.1 200 OK");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_total_are_closed_whatever_their_address() {
    let limits =
        ConnectionLimits { max_connections: 4, max_per_address: 100, header_read_timeout: Duration::from_secs(30) };
    let (addr, stop, task, mut held) = server_holding(limits, (1..=4).map(|i| format!("127.0.1.{i}"))).await;
    let mut over = silent(addr, "127.0.2.1").await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await, "a connection over the total stays open");
    drop(held.pop());
    // A place is free again once one closes (the server notices the close, then accepts).
    assert_eq!(healthz_within(addr, "127.0.2.2", Duration::from_secs(3)).await, "HTTP/1.1 200 OK");
    // Shutting down does not wait for the silent connections' 30 s timeout (5 s of grace).
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}
