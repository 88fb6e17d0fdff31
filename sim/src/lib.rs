//! Fleet simulation for Flotilla: partition a dataset into client streams, run a real
//! coordinator and many real clients on loopback, run the `alone` and `centralised`
//! baselines on the same streams, and report whether federation pays; measure benchmark
//! processes ([`bench`]).

pub mod baseline;
pub mod bench;
pub mod dataset;
pub mod fleet;
pub mod partition;
pub mod plot;
pub mod procs;
pub mod report;
pub mod topology;
