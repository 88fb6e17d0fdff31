//! Hedge Backpropagation.

pub mod config;

pub use config::HbpConfig;
