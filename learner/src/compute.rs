//! Choosing where the learner's kernels run: a GPU through burn-wgpu, or burn's flex CPU backend.
//!
//! The wgpu runtime is pinned to Vulkan: without Vulkan, wgpu's automatic choice falls back
//! to OpenGL, which hangs on software rasterisers. A missing adapter is reported as an
//! error by [`burn::tensor::Device::wgpu_options`], never as a panic at first use. burn lets a
//! process initialise a wgpu runtime once, so the outcome is cached for the process.
//!
//! Without the crate's `gpu` feature there is no wgpu runtime at all: `--backend gpu` is
//! refused with that reason and `auto` takes the CPU.
//!
//! When no hardware adapter is found on a machine with an NVIDIA driver loaded, the reason
//! says what stands in the way (the container's driver capabilities, the Vulkan manifest,
//! the driver's graphics libraries, a GLX-only manifest without a display) and how to fix it
//! ([`nvidia`]).

use std::fmt;
use std::str::FromStr;
#[cfg(feature = "gpu")]
use std::sync::OnceLock;

use burn::tensor::Device;

mod nvidia;

/// Which backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A hardware GPU if one exists, else the CPU.
    #[default]
    Auto,
    /// burn-wgpu on Vulkan, any adapter (a software one included); an error if none exists.
    Gpu,
    /// burn's flex CPU backend.
    Cpu,
}

impl BackendChoice {
    /// The command-line name (`auto`, `gpu`, `cpu`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
        }
    }
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!("unknown backend {other:?} (expected auto, gpu or cpu)")),
        }
    }
}

/// The backend a [`ComputeDevice`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn-wgpu (Vulkan).
    Gpu,
    /// burn's flex CPU backend.
    Cpu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
        })
    }
}

/// Why no device could be had.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// `--backend gpu` was asked for but wgpu found no Vulkan adapter.
    #[error("no GPU available through Vulkan: {0}")]
    NoGpu(String),
}

/// A burn device with a human-readable account of what it is and why it was chosen.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    /// The burn device to create tensors on.
    pub device: Device,
    /// Which backend it is.
    pub kind: BackendKind,
    /// The adapter or backend, in words (e.g. `NVIDIA H200 (Vulkan, DiscreteGpu)`).
    pub description: String,
    /// Why this device was chosen, in words.
    pub reason: String,
}

/// A Vulkan adapter found by wgpu.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "gpu"), allow(dead_code))]
struct GpuAdapter {
    device: Device,
    description: String,
    software: bool,
}

#[cfg(feature = "gpu")]
fn vulkan_adapter() -> Result<GpuAdapter, String> {
    use burn::tensor::wgpu::{WgpuBackend, wgpu};
    static ADAPTER: OnceLock<Result<GpuAdapter, String>> = OnceLock::new();
    ADAPTER
        .get_or_init(|| {
            let (device, setup) = Device::wgpu_options()
                .graphics_api(WgpuBackend::Vulkan)
                .init_with_setup()
                .map_err(|e| e.to_string())?;
            let info = setup.adapter.get_info();
            Ok(GpuAdapter {
                device,
                description: format!(
                    "{} ({:?}, {:?}, driver {})",
                    info.name, info.backend, info.device_type, info.driver
                ),
                software: info.device_type == wgpu::DeviceType::Cpu,
            })
        })
        .clone()
}

#[cfg(not(feature = "gpu"))]
fn vulkan_adapter() -> Result<GpuAdapter, String> {
    Err("this build has no GPU backend (built without the `gpu` feature)".into())
}

/// What stands between an NVIDIA GPU on this machine and a Vulkan adapter ([`nvidia`]), as
/// a sentence to append to the reason no GPU was taken; empty without an NVIDIA driver.
fn nvidia_findings() -> String {
    let var = |name: &str| std::env::var(name).ok();
    let findings = nvidia::diagnose(&nvidia::Machine { root: std::path::Path::new("/"), var: &var });
    if findings.is_empty() { String::new() } else { format!(" (NVIDIA GPU present: {})", findings.join("; ")) }
}

fn cpu(reason: String) -> ComputeDevice {
    ComputeDevice { device: Device::flex(), kind: BackendKind::Cpu, description: "burn flex (CPU)".into(), reason }
}

/// Resolves the user's [`BackendChoice`] to a device.
///
/// `Auto` takes a hardware GPU when wgpu finds one on Vulkan. A software adapter such as
/// Mesa's llvmpipe is slower than the flex CPU backend, so `Auto` passes over it (ask for
/// `Gpu` to use it anyway, as the tests do).
pub fn select(choice: BackendChoice) -> Result<ComputeDevice, ComputeError> {
    match choice {
        BackendChoice::Cpu => Ok(cpu("asked for with --backend cpu".into())),
        BackendChoice::Gpu => {
            let adapter = vulkan_adapter().map_err(|why| ComputeError::NoGpu(format!("{why}{}", nvidia_findings())))?;
            Ok(ComputeDevice {
                device: adapter.device,
                kind: BackendKind::Gpu,
                description: adapter.description,
                reason: "asked for with --backend gpu".into(),
            })
        }
        BackendChoice::Auto => Ok(match vulkan_adapter() {
            Ok(adapter) if !adapter.software => ComputeDevice {
                device: adapter.device,
                kind: BackendKind::Gpu,
                reason: "a hardware GPU adapter was found".into(),
                description: adapter.description,
            },
            Ok(adapter) => cpu(format!(
                "the only Vulkan adapter is a software rasteriser ({}), slower than the CPU backend{}",
                adapter.description,
                nvidia_findings()
            )),
            Err(why) => cpu(format!("no Vulkan GPU adapter: {why}{}", nvidia_findings())),
        }),
    }
}
