//! The CUSE transport: our own loop over `/dev/cuse`.
