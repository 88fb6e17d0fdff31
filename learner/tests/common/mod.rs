//! Helpers shared by this crate's integration tests.

use flotilla_learner::compute::{self, BackendChoice, ComputeDevice};

/// The Vulkan GPU device, or `None` (with a note on stderr) when there is none, unless
/// `FLOTILLA_REQUIRE_GPU` is set (CI installs a software adapter): then a missing adapter fails.
pub fn gpu_or_skip() -> Option<ComputeDevice> {
    match compute::select(BackendChoice::Gpu) {
        Ok(gpu) => {
            eprintln!("GPU adapter: {}", gpu.description);
            Some(gpu)
        }
        Err(error) if std::env::var_os("FLOTILLA_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: {error} (set FLOTILLA_REQUIRE_GPU=1 to make this a failure)");
            None
        }
        Err(error) => panic!("FLOTILLA_REQUIRE_GPU is set but {error}"),
    }
}
