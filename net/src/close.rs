//! QUIC application close codes: how a closing side tells its peer why.
//!
//! Code 0 is a normal goodbye; every [`ErrorCode`] has its own code, so a peer that misses
//! the `Error` message (the connection closed before it was read) still learns the reason.

use flotilla_protocol::round::CloseReason;
use flotilla_protocol::wire::ErrorCode;
use quinn::VarInt;

/// Code of a normal close (goodbye, shutdown).
pub const GOODBYE: VarInt = VarInt::from_u32(0);

const CODES: [ErrorCode; 12] = [
    ErrorCode::UnsupportedVersion,
    ErrorCode::Unauthorized,
    ErrorCode::Malformed,
    ErrorCode::UnexpectedMessage,
    ErrorCode::StaleUpdate,
    ErrorCode::InvalidUpdate,
    ErrorCode::Timeout,
    ErrorCode::ShuttingDown,
    ErrorCode::Internal,
    ErrorCode::SessionReplaced,
    ErrorCode::Declined,
    ErrorCode::TryLater,
];

/// The application close code of an error.
pub fn error_close_code(code: ErrorCode) -> VarInt {
    let index = CODES.iter().position(|c| *c == code).unwrap_or(CODES.len() - 1);
    VarInt::from_u32(index as u32 + 1)
}

/// The application close code of a state machine's close reason.
pub fn close_code(reason: &CloseReason) -> VarInt {
    match reason {
        CloseReason::Goodbye => GOODBYE,
        CloseReason::Error(code) => error_close_code(*code),
    }
}

/// The error a close code stands for; `None` for a goodbye or an unknown code.
pub fn error_of_close_code(code: VarInt) -> Option<ErrorCode> {
    let index = usize::try_from(code.into_inner()).ok()?.checked_sub(1)?;
    CODES.get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in CODES {
            assert_eq!(error_of_close_code(error_close_code(code)), Some(code));
        }
        assert_eq!(error_of_close_code(GOODBYE), None);
        assert_eq!(error_of_close_code(VarInt::from_u32(99)), None);
    }
}
