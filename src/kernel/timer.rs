//! (being written: timer_list)

pub(crate) fn init() {}
pub(crate) fn rearm() {}
