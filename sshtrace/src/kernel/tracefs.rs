//! Finding (or mounting) tracefs and reading tracepoint `format` files.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs directory, mounting tracefs (privately, see `mounts`) when no mount exists.
pub fn ensure_mounted() -> Result<PathBuf> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let target = Path::new(MOUNT_POINTS[0]);
    if !target.is_dir() {
        bail!(
            "no tracefs: {} does not exist (is CONFIG_TRACING enabled?)",
            target.display()
        );
    }
    super::mounts::mount_private("tracefs", target)
        .map_err(|e| anyhow::anyhow!("no tracefs mounted, and mounting it failed: {e:#}"))?;
    find().context("tracefs was mounted but has no events directory")
}

fn find() -> Option<PathBuf> {
    MOUNT_POINTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub type_name: String,
    pub offset: u16,
    pub size: u16,
}

/// The fields of one tracepoint's record, parsed from its `format` file.
#[derive(Clone, Debug, Default)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    pub fn load(tracefs: &Path, category: &str, name: &str) -> Result<Self> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("the kernel has no tracepoint {category}:{name}"))?;
        Ok(Self::parse(&text))
    }

    /// Parses lines like `\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;`.
    pub fn parse(text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let mut decl = None;
                let mut offset = None;
                let mut size = None;
                for part in line.split(';') {
                    let part = part.trim();
                    if let Some(d) = part.strip_prefix("field:") {
                        decl = Some(d.trim());
                    } else if let Some(o) = part.strip_prefix("offset:") {
                        offset = o.parse().ok();
                    } else if let Some(s) = part.strip_prefix("size:") {
                        size = s.parse().ok();
                    }
                }
                let decl = decl?;
                // The name is the last word of the declaration, without an array suffix.
                let last = decl.rsplit(' ').next()?;
                let name = last.split('[').next()?.trim_start_matches('*');
                let type_name = decl[..decl.len() - last.len()].trim().to_owned();
                Some((
                    name.to_owned(),
                    Field {
                        type_name,
                        offset: offset?,
                        size: size?,
                    },
                ))
            })
            .collect();
        Self { fields }
    }

    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    pub fn offset(&self, name: &str) -> Option<u16> {
        self.get(name).map(|f| f.offset)
    }

    /// The offset of a field every supported kernel has; its absence is an error.
    pub fn require(&self, tracepoint: &str, name: &str) -> Result<u16> {
        self.offset(name).with_context(|| {
            format!("tracepoint {tracepoint} has no field '{name}' on this kernel")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET_6_18: &str = "name: tcp_send_reset
ID: 1533
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: \"skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s\", REC->skbaddr
";

    #[test]
    fn parses_fields_with_pointers_arrays_and_enums() {
        let f = Format::parse(SEND_RESET_6_18);
        assert_eq!(f.offset("skaddr"), Some(16));
        assert_eq!(f.offset("reason"), Some(28));
        assert_eq!(f.get("reason").unwrap().type_name, "enum sk_rst_reason");
        assert_eq!(f.get("saddr").unwrap().size, 28);
        assert_eq!(f.get("daddr").unwrap().offset, 60);
        assert_eq!(f.get("skbaddr").unwrap().type_name, "const void *");
        assert!(f.get("print").is_none());
    }

    #[test]
    fn data_loc_fields_are_named_without_brackets() {
        let f = Format::parse("\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;");
        assert_eq!(f.offset("filename"), Some(8));
        assert_eq!(f.get("filename").unwrap().type_name, "__data_loc char[]");
    }
}
