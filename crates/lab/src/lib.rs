//! placeholder: the lab helper replaces this file.
use std::path::PathBuf;
/// Lab settings.
pub struct LabConfig {
    pub nodes: usize,
    pub pods_per_node: usize,
    pub range: String,
    pub mode: String,
    pub mtu: u32,
    pub keep: bool,
    pub binary: PathBuf,
}
/// Lab error.
#[derive(Debug)]
pub struct LabError;
impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("lab not built yet")
    }
}
impl std::error::Error for LabError {}
/// Run.
pub fn run(_c: &LabConfig) -> Result<bool, LabError> {
    Err(LabError)
}
/// Down.
pub fn down() -> Result<(), LabError> {
    Err(LabError)
}
