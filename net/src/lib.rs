//! Flotilla I/O shell (QUIC, TLS, framed streams).
