//! Why a machine with an NVIDIA GPU shows wgpu no Vulkan adapter, read from the filesystem.
//!
//! The Vulkan loader finds drivers through ICD manifests (JSON files naming a library); the
//! NVIDIA driver's manifest names `libGLX_nvidia.so.0`, which needs the driver's graphics
//! libraries of the same version (`libnvidia-glcore`, `libnvidia-glvkspirv`, and in recent
//! drivers `libnvidia-gpucomp`). In a container the NVIDIA Container Toolkit mounts the
//! manifest and those libraries only with the `graphics` driver capability; with the usual
//! `compute,utility` the loader finds no NVIDIA driver, or loads `libGLX_nvidia.so.0` and
//! fails with "Could not get 'vkCreateInstance' via 'vk_icdGetInstanceProcAddr'". On a
//! headless machine `libGLX_nvidia` can fail the same way where `libEGL_nvidia.so.0` (the
//! same driver, no X server) works: `scripts/nvidia-vulkan-icd` writes a manifest naming it.
//!
//! Two more things stand in the way on some machines: no Vulkan loader (`libvulkan.so.1`) at
//! all, and a runtime that mounts the driver's manifest under `/usr/local/nvidia`, outside the
//! loader's search (it is then found only through `VK_DRIVER_FILES`).
//!
//! [`diagnose`] lists what it finds wrong, each finding with its fix; nothing when the
//! machine has no NVIDIA driver loaded. It never fails: what it cannot read, it reports.

use std::path::{Path, PathBuf};

/// Where [`diagnose`] looks: a filesystem root (`/` in production, a scratch folder in
/// tests) and the process environment.
pub(crate) struct Machine<'a> {
    pub(crate) root: &'a Path,
    pub(crate) var: &'a dyn Fn(&str) -> Option<String>,
}

impl Machine<'_> {
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }
}

/// The loader's default manifest folders (besides `$XDG_*` ones), as the Vulkan loader
/// searches them on Linux.
const ICD_DIRS: [&str; 3] = ["/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d", "/usr/share/vulkan/icd.d"];

/// Where some container runtimes mount the driver's Vulkan manifest: outside the loader's
/// search, so it is found only through `VK_DRIVER_FILES`.
const MOUNTED_ICD_DIRS: [&str; 1] = ["/usr/local/nvidia/share/vulkan/icd.d"];

/// Where distributions and the container toolkit put the driver's libraries.
const LIB_DIRS: [&str; 7] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/local/nvidia/lib64",
];

/// The findings, each a sentence with its fix; empty without an NVIDIA driver.
pub(crate) fn diagnose(machine: &Machine<'_>) -> Vec<String> {
    let Some(version) = driver_version(machine) else { return Vec::new() };
    let named = version.as_deref().unwrap_or("of unknown version");
    let mut findings = Vec::new();
    if let Some(caps) = (machine.var)("NVIDIA_DRIVER_CAPABILITIES")
        && !caps.split(',').any(|c| matches!(c.trim(), "graphics" | "all"))
    {
        findings.push(format!(
            "NVIDIA_DRIVER_CAPABILITIES is {caps:?}: the container toolkit mounts the Vulkan driver only with the \
             graphics capability (start the container with NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics, or all)"
        ));
    }
    if find_library(machine, "libvulkan.so.1").is_none() {
        findings.push(format!(
            "no Vulkan loader (libvulkan.so.1) in {}: install it (Debian and Ubuntu: libvulkan1; Fedora: \
             vulkan-loader)",
            library_dirs(machine).join(":")
        ));
    }
    let (searched, explicit) = searched(machine);
    let found = manifests(machine, &searched, explicit);
    let nvidia: Vec<&(PathBuf, Option<String>)> =
        found.iter().filter(|(_, library)| is_nvidia(library.as_deref())).collect();
    if nvidia.is_empty() {
        let dirs: Vec<String> = MOUNTED_ICD_DIRS.iter().map(|d| d.to_string()).collect();
        let mounted: Vec<String> = manifests(machine, &dirs, false)
            .into_iter()
            .filter(|(_, library)| is_nvidia(library.as_deref()))
            .map(|(path, _)| format!("/{}", path.strip_prefix(machine.root).unwrap_or(&path).display()))
            .collect();
        let fix = match mounted.first() {
            Some(path) => format!(
                "the driver's manifest is at {path}, outside that search: export VK_DRIVER_FILES={path} (on a \
                 machine without a display, `scripts/nvidia-vulkan-icd --from {path}` writes one naming \
                 libEGL_nvidia.so.0)"
            ),
            None => "in a container, the graphics capability mounts /etc/vulkan/icd.d/nvidia_icd.json".into(),
        };
        findings.push(format!(
            "the NVIDIA driver {named} is loaded but no Vulkan ICD manifest names it (looked in {}): {fix}",
            searched.join(", ")
        ));
    }
    for (path, library) in &found {
        if library.is_none() {
            findings.push(format!("{} is not a Vulkan ICD manifest the loader can read", path.display()));
        }
    }
    // The libraries carry the driver's version in their names: without it, nothing to look for.
    let missing: Vec<String> = match &version {
        Some(version) => [
            ("libnvidia-glcore.so", true),
            ("libnvidia-glvkspirv.so", true),
            ("libnvidia-gpucomp.so", major(version) >= 535),
        ]
        .iter()
        .filter(|(_, needed)| *needed)
        .map(|(name, _)| format!("{name}.{version}"))
        .filter(|name| find_library(machine, name).is_none())
        .collect(),
        None => Vec::new(),
    };
    if !missing.is_empty() {
        findings.push(format!(
            "the Vulkan driver of NVIDIA {named} needs {}, not found (in {}): the container toolkit mounts them with the \
             graphics capability; on a host, install the driver's graphics libraries (not only its compute ones)",
            missing.join(", "),
            library_dirs(machine).join(":")
        ));
    }
    let headless = (machine.var)("DISPLAY").is_none() && (machine.var)("WAYLAND_DISPLAY").is_none();
    let glx_only = !nvidia.is_empty()
        && nvidia.iter().all(|(_, library)| library.as_deref().is_some_and(|l| l.contains("libGLX_nvidia")));
    if headless && glx_only {
        let manifest = nvidia.first().map_or_else(String::new, |(path, _)| path.display().to_string());
        findings.push(format!(
            "the NVIDIA manifest {manifest} names libGLX_nvidia.so.0 and there is no display: on headless machines the \
             loader can fail on it (\"Could not get 'vkCreateInstance' via 'vk_icdGetInstanceProcAddr'\") where \
             libEGL_nvidia.so.0 works; `scripts/nvidia-vulkan-icd` writes a manifest naming it and prints the \
             VK_DRIVER_FILES to set"
        ));
    }
    findings
}

/// Whether an NVIDIA driver is loaded (`None` if not) and its version, from
/// `/proc/driver/nvidia/version` ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.163.01
/// …"); `Some(None)` when that file gives none or only the device nodes show the driver.
fn driver_version(machine: &Machine<'_>) -> Option<Option<String>> {
    if let Ok(text) = std::fs::read_to_string(machine.path("/proc/driver/nvidia/version")) {
        let version = text.lines().find(|line| line.starts_with("NVRM version")).and_then(|line| {
            line.split_whitespace().find(|word| word.split('.').all(|p| p.parse::<u32>().is_ok()) && word.contains('.'))
        });
        return Some(version.map(str::to_string));
    }
    machine.path("/dev/nvidiactl").exists().then_some(None)
}

fn major(version: &str) -> u32 {
    version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// Where the loader would look for manifests, and whether those are files rather than
/// folders: `$VK_DRIVER_FILES` / `$VK_ICD_FILENAMES` (files) replace every folder; otherwise
/// `$XDG_CONFIG_DIRS`, `$XDG_DATA_DIRS` and the defaults.
fn searched(machine: &Machine<'_>) -> (Vec<String>, bool) {
    if let Some(files) = (machine.var)("VK_DRIVER_FILES").or_else(|| (machine.var)("VK_ICD_FILENAMES")) {
        return (files.split(':').filter(|f| !f.is_empty()).map(str::to_string).collect(), true);
    }
    let mut dirs: Vec<String> = Vec::new();
    for (var, default) in [("XDG_CONFIG_DIRS", "/etc/xdg"), ("XDG_DATA_DIRS", "/usr/local/share:/usr/share")] {
        let list = (machine.var)(var).unwrap_or_else(|| default.into());
        dirs.extend(
            list.split(':').filter(|d| !d.is_empty()).map(|d| format!("{}/vulkan/icd.d", d.trim_end_matches('/'))),
        );
    }
    for dir in ICD_DIRS {
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.into());
        }
    }
    (dirs, false)
}

fn is_nvidia(library: Option<&str>) -> bool {
    library.is_some_and(|l| l.contains("nvidia"))
}

/// Every manifest in `searched` (files when `explicit`, else folders), with the library it
/// names (`None` when it cannot be read as one).
fn manifests(machine: &Machine<'_>, searched: &[String], explicit: bool) -> Vec<(PathBuf, Option<String>)> {
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in searched {
        let path = machine.path(entry);
        if explicit {
            files.push(path);
        } else if let Ok(dir) = std::fs::read_dir(&path) {
            let mut found: Vec<PathBuf> =
                dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
            found.sort();
            files.extend(found);
        }
    }
    files
        .into_iter()
        .map(|path| {
            let library = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|json| json.get("ICD")?.get("library_path")?.as_str().map(str::to_string));
            (path, library)
        })
        .collect()
}

fn library_dirs(machine: &Machine<'_>) -> Vec<String> {
    let mut dirs: Vec<String> = (machine.var)("LD_LIBRARY_PATH")
        .map(|list| list.split(':').filter(|d| !d.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    dirs.extend(LIB_DIRS.iter().map(|d| d.to_string()));
    dirs
}

fn find_library(machine: &Machine<'_>, name: &str) -> Option<PathBuf> {
    library_dirs(machine).iter().map(|dir| machine.path(dir).join(name)).find(|path| path.exists())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Fake {
        root: tempfile::TempDir,
        vars: BTreeMap<&'static str, String>,
    }

    impl Fake {
        /// A machine with the Vulkan loader installed and nothing else.
        fn new() -> Self {
            let fake = Self { root: tempfile::tempdir().unwrap(), vars: BTreeMap::new() };
            fake.file(LOADER, "");
            fake
        }

        fn file(&self, path: &str, text: &str) {
            let path = self.root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn nvidia(&self, version: &str) {
            self.file(
                "/proc/driver/nvidia/version",
                &format!(
                    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Tue Apr 1 2025\nGCC version:  gcc 12\n"
                ),
            );
        }

        fn manifest(&self, path: &str, library: &str) {
            self.file(path, &format!(r#"{{"file_format_version": "1.0.1", "ICD": {{"library_path": "{library}", "api_version": "1.4.303"}}}}"#));
        }

        /// A loaded driver of `version`, its graphics libraries and a manifest naming `library`.
        fn driver(&self, version: &str, manifest: &str, library: &str) {
            self.nvidia(version);
            self.libraries(version);
            self.manifest(manifest, library);
        }

        fn libraries(&self, version: &str) {
            for name in ["libnvidia-glcore.so", "libnvidia-glvkspirv.so", "libnvidia-gpucomp.so"] {
                self.file(&format!("/usr/lib/x86_64-linux-gnu/{name}.{version}"), "");
            }
        }

        fn diagnose(&self) -> Vec<String> {
            let var = |name: &str| self.vars.get(name).cloned();
            diagnose(&Machine { root: self.root.path(), var: &var })
        }
    }

    const LOADER: &str = "/usr/lib/x86_64-linux-gnu/libvulkan.so.1";

    #[test]
    fn no_nvidia_driver_no_findings() {
        let fake = Fake::new();
        fake.manifest("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json", "/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so");
        assert!(fake.diagnose().is_empty());
    }

    #[test]
    fn a_complete_headless_setup_with_the_egl_manifest_has_no_findings() {
        let mut fake = Fake::new();
        fake.driver("550.163.01", "/etc/vulkan/icd.d/nvidia_icd.json", "libEGL_nvidia.so.0");
        fake.vars.insert("NVIDIA_DRIVER_CAPABILITIES", "compute,utility,graphics".into());
        assert_eq!(fake.diagnose(), Vec::<String>::new());
    }

    #[test]
    fn a_compute_only_container_is_told_about_the_graphics_capability_manifest_and_libraries() {
        let mut fake = Fake::new();
        fake.nvidia("550.163.01");
        fake.vars.insert("NVIDIA_DRIVER_CAPABILITIES", "compute,utility".into());
        let findings = fake.diagnose();
        assert_eq!(findings.len(), 3, "{findings:#?}");
        assert!(findings[0].contains("\"compute,utility\"") && findings[0].contains("graphics"));
        assert!(findings[1].contains("550.163.01") && findings[1].contains("no Vulkan ICD manifest"));
        assert!(
            findings[2].contains("libnvidia-glvkspirv.so.550.163.01")
                && findings[2].contains("libnvidia-gpucomp.so.550.163.01")
        );
    }

    #[test]
    fn a_glx_manifest_without_a_display_points_at_the_egl_one() {
        let mut fake = Fake::new();
        fake.driver("535.54.03", "/etc/vulkan/icd.d/nvidia_icd.json", "libGLX_nvidia.so.0");
        let findings = fake.diagnose();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].contains("libEGL_nvidia.so.0") && findings[0].contains("scripts/nvidia-vulkan-icd"));
        fake.vars.insert("DISPLAY", ":0".into());
        assert!(fake.diagnose().is_empty());
    }

    #[test]
    fn only_the_libraries_of_the_loaded_version_count_and_old_drivers_need_no_gpucomp() {
        let fake = Fake::new();
        fake.nvidia("470.256.02");
        fake.libraries("550.163.01");
        fake.manifest("/usr/share/vulkan/icd.d/nvidia_icd.json", "libEGL_nvidia.so.0");
        let findings = fake.diagnose();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].contains("libnvidia-glcore.so.470.256.02") && !findings[0].contains("gpucomp"));
    }

    #[test]
    fn explicit_driver_files_replace_the_search_and_a_broken_manifest_is_named() {
        let mut fake = Fake::new();
        fake.driver("550.163.01", "/etc/vulkan/icd.d/nvidia_icd.json", "libEGL_nvidia.so.0");
        fake.file("/opt/icd/broken.json", "{ not json");
        fake.vars.insert("VK_DRIVER_FILES", "/opt/icd/broken.json".into());
        let findings = fake.diagnose();
        assert_eq!(findings.len(), 2, "{findings:#?}");
        assert!(findings[0].contains("no Vulkan ICD manifest") && findings[0].contains("/opt/icd/broken.json"));
        assert!(findings[1].contains("broken.json") && findings[1].contains("not a Vulkan ICD manifest"));
    }

    #[test]
    fn a_missing_vulkan_loader_is_named() {
        let fake = Fake::new();
        fake.driver("550.163.01", "/etc/vulkan/icd.d/nvidia_icd.json", "libEGL_nvidia.so.0");
        std::fs::remove_file(fake.root.path().join(LOADER.trim_start_matches('/'))).unwrap();
        let findings = fake.diagnose();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].contains("libvulkan.so.1") && findings[0].contains("libvulkan1"));
        // Found through LD_LIBRARY_PATH too.
        let mut fake = fake;
        fake.file("/opt/vulkan/lib/libvulkan.so.1", "");
        fake.vars.insert("LD_LIBRARY_PATH", "/opt/vulkan/lib".into());
        assert!(fake.diagnose().is_empty());
    }

    #[test]
    fn a_manifest_mounted_outside_the_search_is_named_with_the_variable_to_set() {
        let fake = Fake::new();
        let mounted = "/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json";
        fake.driver("580.159.04", mounted, "libGLX_nvidia.so.0");
        let findings = fake.diagnose();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].contains("no Vulkan ICD manifest names it"), "{}", findings[0]);
        assert!(findings[0].contains(&format!("export VK_DRIVER_FILES={mounted}")), "{}", findings[0]);
        assert!(findings[0].contains(&format!("scripts/nvidia-vulkan-icd --from {mounted}")), "{}", findings[0]);
        // Named in VK_DRIVER_FILES, it is searched: what is left is the GLX-only manifest.
        let mut fake = fake;
        fake.vars.insert("VK_DRIVER_FILES", mounted.into());
        let findings = fake.diagnose();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].contains("libEGL_nvidia.so.0") && !findings[0].contains("no Vulkan ICD manifest"));
    }

    #[test]
    fn device_nodes_alone_show_a_driver_of_unknown_version() {
        let fake = Fake::new();
        fake.file("/dev/nvidiactl", "");
        let findings = fake.diagnose();
        assert!(findings.iter().any(|f| f.contains("of unknown version")), "{findings:#?}");
    }
}
