//! Finding a binary of another member of the workspace. Shared by the
//! product's integration tests (`tests/common`) and the benchmark's
//! harness (`bench/benches/support/harness.rs`), so it uses std only.

use std::path::{Path, PathBuf};

/// The binary `name` of the workspace member `package`. Cargo only hands
/// a test or a bench the binaries of its own package, so it is found where
/// cargo puts every binary of the profile: next to the `deps/` directory
/// the running executable is in. The error names the cargo command that
/// builds it.
pub fn sibling_bin(name: &str, package: &str) -> Result<PathBuf, String> {
    let running = std::env::current_exe()
        .map_err(|error| format!("cannot find the running executable: {error}"))?;
    let profile = running
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in target/<profile>/deps", running.display()))?;
    let bin = profile.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        return Err(format!(
            "{} is missing: build it with `cargo build{} -p {package}`",
            bin.display(),
            profile_flag(profile)
        ));
    }
    Ok(bin)
}

/// The cargo flag that builds into `target/<profile>`.
fn profile_flag(profile: &Path) -> String {
    match profile.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => String::new(),
        Some("release") => " --release".to_owned(),
        Some(name) => format!(" --profile {name}"),
    }
}
