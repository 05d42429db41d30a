//! Installing the multi-call binary into a CNI bin dir as `netattach`, `macvlan` and
//! `whereabouts`, atomically.
//!
//! The binary is copied once to a temporary file in the target directory and fsynced; each
//! name is then a hard link to it, put in place with `rename(2)`. A runtime executing the old
//! plugin at that moment keeps its inode, so there is never a "text file busy" and never a
//! half-written plugin.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The names the binary answers to in a CNI bin dir.
pub const FACES: [&str; 3] = ["netattach", "macvlan", "whereabouts"];

/// An install step failed.
#[derive(Debug, thiserror::Error)]
#[error("{context} `{}`: {source}", path.display())]
pub struct InstallError {
    context: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError {
        context,
        path,
        source,
    }
}

/// Installs `source` into `bin_dir` under every name in [`FACES`]. With `dry_run` nothing is
/// touched. Returns the steps, one line each.
pub fn install(source: &Path, bin_dir: &Path, dry_run: bool) -> Result<Vec<String>, InstallError> {
    let tmp = bin_dir.join(format!(".netattach.install-{}", std::process::id()));
    let mut steps = vec![
        format!("create directory {}", bin_dir.display()),
        format!(
            "copy {} to {} (mode 0755, fsync)",
            source.display(),
            tmp.display()
        ),
    ];
    for face in FACES {
        steps.push(format!(
            "link {} as {} (rename, atomic)",
            tmp.display(),
            bin_dir.join(face).display()
        ));
    }
    steps.push(format!("remove {}", tmp.display()));
    if dry_run {
        return Ok(steps);
    }
    fs::create_dir_all(bin_dir).map_err(io_err("creating", bin_dir))?;
    let result = place(source, bin_dir, &tmp);
    // The temporary name is never left behind, also on failure.
    let _ = fs::remove_file(&tmp);
    result.map(|()| steps)
}

fn place(source: &Path, bin_dir: &Path, tmp: &Path) -> Result<(), InstallError> {
    fs::copy(source, tmp).map_err(io_err("copying to", tmp))?;
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", tmp))?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", tmp))?;
    for face in FACES {
        let staged = bin_dir.join(format!(".{face}.staged-{}", std::process::id()));
        let _ = fs::remove_file(&staged);
        fs::hard_link(tmp, &staged).map_err(io_err("linking", &staged))?;
        let dest = bin_dir.join(face);
        if let Err(e) = fs::rename(&staged, &dest) {
            let _ = fs::remove_file(&staged);
            return Err(io_err("renaming into place", &dest)(e));
        }
    }
    OpenOptions::new()
        .read(true)
        .open(bin_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", bin_dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn installs_three_names_sharing_one_inode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("src-bin");
        fs::write(&src, b"#!/bin/sh\necho v1\n").expect("write");
        let bin = dir.path().join("cni/bin");
        install(&src, &bin, false).expect("install");
        let inodes: Vec<u64> = FACES
            .iter()
            .map(|f| fs::metadata(bin.join(f)).expect("meta").ino())
            .collect();
        assert!(inodes.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(
            fs::metadata(bin.join("macvlan"))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        let names: Vec<String> = fs::read_dir(&bin)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");

        // Reinstall over a file that is open (as a running plugin would hold it): the old inode
        // stays intact for its reader, the name points at the new content.
        let held = File::open(bin.join("macvlan")).expect("open");
        fs::write(&src, b"#!/bin/sh\necho v2\n").expect("write");
        install(&src, &bin, false).expect("reinstall");
        assert_eq!(
            fs::read(bin.join("macvlan")).expect("read"),
            b"#!/bin/sh\necho v2\n"
        );
        assert_ne!(
            held.metadata().expect("meta").ino(),
            fs::metadata(bin.join("macvlan")).expect("meta").ino()
        );
    }

    #[test]
    fn dry_run_touches_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = dir.path().join("bin");
        let steps = install(Path::new("/proc/self/exe"), &bin, true).expect("plan");
        assert!(!bin.exists());
        assert!(steps.iter().any(|s| s.contains("whereabouts")));
    }
}
