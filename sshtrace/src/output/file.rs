//! A file output's blocking side, run on tokio's blocking threads (never on the event loop's):
//! a full or stalled disk delays this output alone.
//!
//! sshtrace runs as root and the directory may be writable by others, so the file is opened
//! relative to a descriptor of its directory with `O_NOFOLLOW` (a planted symbolic link is
//! refused, not followed), `O_NONBLOCK` and a regular-file check (a planted FIFO or device is
//! refused, never blocks), `O_APPEND`, `O_CLOEXEC`, and mode 0640 when created. Rotation
//! renames through the same directory descriptor (`renameat`), and only the file sshtrace has
//! open: what stands at the path now (a new file after logrotate) is never renamed.

use std::{
    ffi::{CStr, CString},
    fs::File,
    io::{self, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{FileExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use rustix::{
    fs::{AtFlags, Mode, OFlags},
    io::Errno,
};

/// Mode of a file sshtrace creates (the umask may take more away): verdicts name users and
/// addresses, not for every local user to read.
const MODE: Mode = Mode::from_raw_mode(0o640);

pub struct FileOut {
    /// The directory, opened once per open of the file: rotation and reopening go through it.
    dir: File,
    name: CString,
    path: PathBuf,
    file: File,
    /// Bytes in the file, for rotation by size.
    size: u64,
    /// The file may end with part of a line (a failed write could not be cut off, or it was
    /// found so at open): the next record starts with a newline.
    broken_tail: bool,
}

impl FileOut {
    pub fn open(path: &Path) -> io::Result<Self> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
        let dir_path = path.parent().ok_or_else(|| invalid("no directory"))?;
        let name = path.file_name().ok_or_else(|| invalid("no file name"))?;
        let name = CString::new(name.as_bytes()).map_err(|_| invalid("NUL in the file name"))?;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlags::DIRECTORY.bits() as i32)
            .open(dir_path)?;
        let (file, broken_tail) = open_at(&dir, &name, path)?;
        Ok(Self {
            size: file.metadata()?.len(),
            dir,
            name,
            path: path.to_owned(),
            file,
            broken_tail,
        })
    }

    /// Appends one record (a whole line), rotating first when it would pass `max_size`.
    pub fn write_record(
        &mut self,
        line: &[u8],
        max_size: Option<u64>,
        keep: u32,
    ) -> io::Result<()> {
        if let Some(max) = max_size {
            if self.size > 0 && self.size + line.len() as u64 > max {
                self.rotate(keep)?;
            }
        }
        if self.broken_tail {
            self.append(b"\n")?;
            self.broken_tail = false;
        }
        self.append(line)
    }

    /// Writes all of `bytes`, or leaves the file as it was. On a full disk `write` can take
    /// part of a record and then fail: the part written is cut off again (`O_APPEND` put it
    /// at the end of the file), so that the file never holds half a line followed by a whole
    /// one. Should cutting fail too, the next record starts on a new line: then one line is
    /// broken, and every other line still parses. (Another process appending to the same file
    /// in that instant would lose its bytes to the cut: a log file has one writer.)
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0;
        let error = loop {
            if written == bytes.len() {
                self.size += written as u64;
                return Ok(());
            }
            match self.file.write(&bytes[written..]) {
                Ok(0) => break io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break e,
            }
        };
        if written > 0 {
            let cut = self.file.metadata().ok().and_then(|m| {
                let len = m.len().checked_sub(written as u64)?;
                self.file.set_len(len).ok().map(|()| len)
            });
            match cut {
                Some(len) => self.size = len,
                None => {
                    self.broken_tail = true;
                    self.size += written as u64;
                }
            }
        }
        Err(error)
    }

    /// PATH → PATH.1 → … → PATH.keep (the oldest is removed), then a new PATH.
    fn rotate(&mut self, keep: u32) -> io::Result<()> {
        if self.ours_at_path() {
            let numbered = |n: u32| {
                let mut name = self.name.as_bytes().to_vec();
                name.extend_from_slice(format!(".{n}").as_bytes());
                CString::new(name).expect("no NUL")
            };
            let dir = &self.dir;
            if keep == 0 {
                rustix::fs::unlinkat(dir, &self.name, AtFlags::empty())?;
            } else {
                let _ = rustix::fs::unlinkat(dir, numbered(keep), AtFlags::empty());
                for n in (1..keep).rev() {
                    // Absent ones are skipped.
                    let _ = rustix::fs::renameat(dir, numbered(n), dir, numbered(n + 1));
                }
                rustix::fs::renameat(dir, &self.name, dir, numbered(1))?;
            }
        }
        let (file, broken_tail) = open_at(&self.dir, &self.name, &self.path)?;
        self.size = file.metadata()?.len();
        self.file = file;
        self.broken_tail = broken_tail;
        Ok(())
    }

    /// Whether the name in the directory is still the file sshtrace has open.
    fn ours_at_path(&self) -> bool {
        let Ok(open) = self.file.metadata() else {
            return false;
        };
        rustix::fs::statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_dev == open.dev() && st.st_ino == open.ino())
    }
}

/// Opens (creating) `name` in `dir` for appending; see the module's description. Returns the
/// file and whether it ends with part of a line (checked when it may be read).
fn open_at(dir: &File, name: &CStr, path: &Path) -> io::Result<(File, bool)> {
    let flags = OFlags::APPEND
        | OFlags::CREATE
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NONBLOCK
        | OFlags::NOCTTY;
    let open = |access: OFlags| rustix::fs::openat(dir, name, flags | access, MODE).map(File::from);
    // Read-write where allowed, to see whether the file ends a line.
    let (file, readable) = match open(OFlags::RDWR) {
        Ok(f) => (f, true),
        Err(Errno::ACCESS) => (open(OFlags::WRONLY)?, false),
        Err(Errno::LOOP) => {
            return Err(io::Error::other(format!(
                "{} is a symbolic link; not followed",
                path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file; not written",
            path.display()
        )));
    }
    // Back to blocking writes (O_NONBLOCK only kept a FIFO's open from waiting).
    let _ = rustix::fs::fcntl_setfl(&file, OFlags::APPEND);
    let mut last = [0u8];
    let broken_tail = readable
        && meta.len() > 0
        && file.read_at(&mut last, meta.len() - 1).ok() == Some(1)
        && last[0] != b'\n';
    Ok((file, broken_tail))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sshtrace-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn creates_0640_and_refuses_links_and_fifos() {
        let dir = scratch("modes");
        let path = dir.join("v.jsonl");
        let mut out = FileOut::open(&path).unwrap();
        out.write_record(b"{}\n", None, 0).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "{mode:o}");

        let link = dir.join("link.jsonl");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = FileOut::open(&link).err().unwrap().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");

        let fifo = dir.join("fifo.jsonl");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = FileOut::open(&fifo).err().unwrap().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_line_left_by_an_earlier_run_is_ended() {
        let dir = scratch("torn");
        let path = dir.join("v.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut out = FileOut::open(&path).unwrap();
        out.write_record(b"{\"c\":3}\n", None, 0).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":\n{\"c\":3}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_renames_only_its_own_file() {
        let dir = scratch("rotate");
        let path = dir.join("v.jsonl");
        let mut out = FileOut::open(&path).unwrap();
        for i in 0..4 {
            out.write_record(format!("{i}\n").as_bytes(), Some(2), 2)
                .unwrap();
        }
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        assert_eq!(
            (read("v.jsonl"), read("v.jsonl.1"), read("v.jsonl.2")),
            ("3\n".into(), "2\n".into(), "1\n".into())
        );
        // logrotate's way: renamed away, a new file created; not rotated again.
        std::fs::rename(&path, dir.join("v.jsonl.old")).unwrap();
        std::fs::write(&path, "x\n").unwrap();
        out.write_record(b"4\n", Some(2), 2).unwrap();
        assert_eq!(read("v.jsonl.old"), "3\n");
        assert_eq!(read("v.jsonl"), "x\n4\n");
        assert_eq!(read("v.jsonl.1"), "2\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
