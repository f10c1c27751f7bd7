//! The lab's modules, written on the runtime.
