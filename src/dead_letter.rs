//! Why a record went to the dead-letter topic: a bounded set of codes, used as
//! the `incentives.error.code` header and as a metric label (never raw text).

/// The reason a record could not be applied. Infrastructure faults are never
/// a reason: they are retried, not dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The value does not start with the single-object marker 0xC3 0x01
    /// (or is empty / a tombstone).
    NotSingleObject,
    /// The 8-byte schema fingerprint matches no schema in `schemas/`.
    UnknownFingerprint,
    /// The body is not a valid Avro datum for its writer schema
    /// (truncated, corrupt, trailing bytes).
    UndecodableBody,
    /// The datum decoded but a field is invalid (empty id, unknown time zone,
    /// out-of-range timestamp, ...). The detail names the field.
    InvalidField,
    /// The record is larger than `processor.max_record_bytes`.
    Oversize,
    /// The record sits in a partition other than murmur2(user id).
    Misrouted,
    /// Event time is older than the user's watermark minus the lateness window.
    TooLate,
    /// Event time is further in the future than the allowed clock skew.
    TooFarInFuture,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 8] = [
        DeadLetterReason::NotSingleObject,
        DeadLetterReason::UnknownFingerprint,
        DeadLetterReason::UndecodableBody,
        DeadLetterReason::InvalidField,
        DeadLetterReason::Oversize,
        DeadLetterReason::Misrouted,
        DeadLetterReason::TooLate,
        DeadLetterReason::TooFarInFuture,
    ];

    /// The code written to the `incentives.error.code` header.
    pub fn code(self) -> &'static str {
        match self {
            DeadLetterReason::NotSingleObject => "not_single_object",
            DeadLetterReason::UnknownFingerprint => "unknown_fingerprint",
            DeadLetterReason::UndecodableBody => "undecodable_body",
            DeadLetterReason::InvalidField => "invalid_field",
            DeadLetterReason::Oversize => "oversize",
            DeadLetterReason::Misrouted => "misrouted",
            DeadLetterReason::TooLate => "too_late",
            DeadLetterReason::TooFarInFuture => "too_far_in_future",
        }
    }
}

/// Header names on dead-lettered records (the original headers are kept too).
pub mod headers {
    pub const SOURCE_TOPIC: &str = "incentives.source.topic";
    pub const SOURCE_PARTITION: &str = "incentives.source.partition";
    pub const SOURCE_OFFSET: &str = "incentives.source.offset";
    pub const ERROR_CODE: &str = "incentives.error.code";
    /// Human-readable detail, at most 512 bytes; names the bad field.
    pub const ERROR_DETAIL: &str = "incentives.error.detail";
}
