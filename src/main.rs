//! `deferred`: load one of the lab's modules; its device appears as `/dev/<name>` through CUSE.
//! SIGINT/SIGTERM unloads it (the device disappears). The whole lifecycle is
//! [`deferred::daemon`]; `deferred --help` lists the modules and their parameters.

deferred::daemon_main!(deferred::modules::MODULES);
