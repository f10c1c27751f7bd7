//! (being written: tasklets)

pub(crate) fn init() {}
