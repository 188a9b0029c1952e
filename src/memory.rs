//! How much memory this process may really use, and checked size arithmetic.
//!
//! A size computed from user input (`L x M x D`, `steps x d_out x N`, an NPY header's
//! shape) can exceed `usize`: unchecked, the product wraps, a tiny buffer is allocated
//! and a long slice is built over it. Every such size goes through [`product`] or
//! [`sum`], which fail with the names and values of the terms instead.
//!
//! A size that fits `usize` can still exceed the machine, and the process is then
//! killed by the OOM killer (or aborts on a failed allocation) with no word of why.
//! Commands estimate their peak memory before they allocate and [`check`] it against
//! [`available`]: the least of
//! - the cgroup v2 limit (`memory.max - memory.current` of this process's cgroup and of
//!   every parent; `max` is no limit), or the cgroup v1 limit
//!   (`memory.limit_in_bytes - memory.usage_in_bytes`), which is what a container or a
//!   systemd slice enforces;
//! - the Slurm job's memory (`SLURM_MEM_PER_NODE` MB, or `SLURM_MEM_PER_CPU` MB times
//!   `SLURM_CPUS_ON_NODE`, else `SLURM_CPUS_PER_TASK`), which Slurm enforces even where
//!   it does not use cgroups;
//! - `MemAvailable` of `/proc/meminfo`, what the host can give without swapping.
//!
//! `RESLIM_MEMORY_LIMIT` (bytes, or a number with a K, M, G or T suffix, powers of 1024)
//! replaces all of them: for tests, and for users whose limit is enforced some other way.
//!
//! The parsers take file contents and variable values as arguments, so that they are
//! tested on fixtures; only [`available`] reads the system.

use std::path::{Path, PathBuf};

/// A size that overflows, or more memory than is available.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// A size, count or byte total does not fit in 64 bits.
    #[error("{expr} overflows (sizes are limited to 2^63 - 1)")]
    Overflow {
        /// The terms, named and with their values, e.g. `'L' x 'M' x 'D' = 2 x 3 x 4`.
        expr: String,
    },
    /// The estimate exceeds what this process may use.
    #[error("{what} needs {} ({need} bytes), {} available ({by})", gb(*need), gb(*available))]
    Insufficient {
        what: String,
        need: usize,
        available: usize,
        by: Source,
    },
    /// `RESLIM_MEMORY_LIMIT` is not a size.
    #[error(
        "RESLIM_MEMORY_LIMIT = '{0}' is not a size (bytes, or a number with a K, M, G or T suffix)"
    )]
    BadOverride(String),
}

impl From<crate::cpu::AllocError> for MemoryError {
    fn from(e: crate::cpu::AllocError) -> Self {
        match e {
            crate::cpu::AllocError::Overflow { expr } => MemoryError::Overflow { expr },
            crate::cpu::AllocError::Refused { what, bytes } => MemoryError::Insufficient {
                what,
                need: bytes,
                available: 0,
                by: Source::Allocator,
            },
        }
    }
}

/// Bytes as GB with one decimal (three significant digits below 1 GB).
pub fn gb(bytes: usize) -> String {
    let g = bytes as f64 / 1e9;
    if g >= 1.0 {
        format!("{g:.1} GB")
    } else {
        format!("{g:.3} GB")
    }
}

/// What set the memory available to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Source {
    /// `RESLIM_MEMORY_LIMIT`.
    Override,
    CgroupV2,
    CgroupV1,
    Slurm,
    MemInfo,
    /// The allocator refused the request (what remained was less than asked).
    Allocator,
    /// Nothing could be read: no limit is assumed.
    Unknown,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Override => "RESLIM_MEMORY_LIMIT",
            Source::CgroupV2 => "cgroup v2 limit",
            Source::CgroupV1 => "cgroup v1 limit",
            Source::Slurm => "Slurm job memory",
            Source::MemInfo => "MemAvailable of /proc/meminfo",
            Source::Allocator => "the allocator refused",
            Source::Unknown => "no limit found",
        })
    }
}

/// The share of the available memory a run may plan to use (a training run's engine
/// choice, a sweep's tasks together): the estimates leave out the allocator's slack, the
/// data and the records being written.
pub const FRACTION: f64 = 0.85;

/// The memory this process may use, and what set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Available {
    /// `usize::MAX` when nothing is known.
    pub bytes: usize,
    pub source: Source,
}

impl Available {
    /// Fails unless `need` bytes fit; `what` names what needs them.
    pub fn check(&self, need: usize, what: &str) -> Result<(), MemoryError> {
        if need > self.bytes {
            return Err(MemoryError::Insufficient {
                what: what.to_string(),
                need,
                available: self.bytes,
                by: self.source,
            });
        }
        Ok(())
    }

    /// `fraction` of the bytes (headroom for what estimates leave out).
    pub fn scaled(&self, fraction: f64) -> Available {
        Available {
            bytes: if self.bytes == usize::MAX {
                usize::MAX
            } else {
                (self.bytes as f64 * fraction) as usize
            },
            source: self.source,
        }
    }
}

/// The largest size: no allocation (of at least a byte per element) can be larger.
pub const MAX_SIZE: usize = isize::MAX as usize;

/// `factors` multiplied, or an error naming every factor with its value if the product
/// exceeds [`MAX_SIZE`].
pub fn product(factors: &[(&str, usize)]) -> Result<usize, MemoryError> {
    factors
        .iter()
        .try_fold(1usize, |acc, &(_, v)| acc.checked_mul(v))
        .filter(|&x| x <= MAX_SIZE)
        .ok_or_else(|| MemoryError::Overflow {
            expr: expression(factors, " x "),
        })
}

/// `terms` added, or an error naming every term with its value if the sum exceeds
/// [`MAX_SIZE`].
pub fn sum(terms: &[(&str, usize)]) -> Result<usize, MemoryError> {
    terms
        .iter()
        .try_fold(0usize, |acc, &(_, v)| acc.checked_add(v))
        .filter(|&x| x <= MAX_SIZE)
        .ok_or_else(|| MemoryError::Overflow {
            expr: expression(terms, " + "),
        })
}

fn expression(terms: &[(&str, usize)], op: &str) -> String {
    // Constant factors (all digits) are written bare, named quantities quoted.
    let names: Vec<String> = terms
        .iter()
        .map(|(n, _)| {
            if n.chars().all(|c| c.is_ascii_digit()) {
                n.to_string()
            } else {
                format!("'{n}'")
            }
        })
        .collect();
    let values: Vec<String> = terms.iter().map(|(_, v)| v.to_string()).collect();
    format!("{} = {}", names.join(op), values.join(op))
}

/// The memory this process may use now: `RESLIM_MEMORY_LIMIT` if set, else the least of
/// the cgroup, Slurm and `/proc/meminfo` figures that apply (see the module docs).
pub fn available() -> Result<Available, MemoryError> {
    if let Some(v) = std::env::var_os("RESLIM_MEMORY_LIMIT") {
        let s = v.to_string_lossy();
        return parse_size(&s)
            .map(|bytes| Available {
                bytes,
                source: Source::Override,
            })
            .ok_or_else(|| MemoryError::BadOverride(s.into_owned()));
    }
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let proc_cgroup = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = Vec::new();
    if let Some(rel) = cgroup_v2_path(&proc_cgroup) {
        let levels: Vec<(Option<String>, Option<String>)> = ancestors(root, &rel)
            .iter()
            .map(|dir| {
                (
                    read(&dir.join("memory.max")),
                    read(&dir.join("memory.current")),
                )
            })
            .collect();
        if let Some(b) = cgroup_levels(&levels, parse_v2_limit) {
            candidates.push((b, Source::CgroupV2));
        }
    }
    if let Some(rel) = cgroup_v1_path(&proc_cgroup) {
        let mem_root = root.join("memory");
        let mut levels: Vec<(Option<String>, Option<String>)> = ancestors(&mem_root, &rel)
            .iter()
            .map(|dir| {
                (
                    read(&dir.join("memory.limit_in_bytes")),
                    read(&dir.join("memory.usage_in_bytes")),
                )
            })
            .collect();
        if levels.iter().all(|(l, _)| l.is_none()) {
            // A container with its own cgroup namespace mounts its cgroup at the root.
            levels = vec![(
                read(&mem_root.join("memory.limit_in_bytes")),
                read(&mem_root.join("memory.usage_in_bytes")),
            )];
        }
        if let Some(b) = cgroup_levels(&levels, parse_v1_limit) {
            candidates.push((b, Source::CgroupV1));
        }
    }
    let var = |k: &str| std::env::var(k).ok();
    if let Some(b) = slurm_limit(
        var("SLURM_MEM_PER_NODE").as_deref(),
        var("SLURM_MEM_PER_CPU").as_deref(),
        var("SLURM_CPUS_ON_NODE").as_deref(),
        var("SLURM_CPUS_PER_TASK").as_deref(),
    ) {
        candidates.push((b, Source::Slurm));
    }
    if let Some(b) = read(Path::new("/proc/meminfo")).and_then(|s| meminfo_available(&s)) {
        candidates.push((b, Source::MemInfo));
    }
    Ok(least(&candidates))
}

/// Fails unless `need` bytes fit in [`available`] memory; `what` names what needs them.
pub fn check(need: usize, what: &str) -> Result<(), MemoryError> {
    available()?.check(need, what)
}

/// The smallest of the candidates (the first of equals), or no limit.
pub fn least(candidates: &[(usize, Source)]) -> Available {
    candidates
        .iter()
        .fold(None::<(usize, Source)>, |best, &c| match best {
            Some(b) if b.0 <= c.0 => Some(b),
            _ => Some(c),
        })
        .map(|(bytes, source)| Available { bytes, source })
        .unwrap_or(Available {
            bytes: usize::MAX,
            source: Source::Unknown,
        })
}

/// `root/rel` and each of its parents up to `root` itself, innermost first.
fn ancestors(root: &Path, rel: &str) -> Vec<PathBuf> {
    let mut dir = root.to_path_buf();
    let mut out = vec![dir.clone()];
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        out.push(dir.clone());
    }
    out.reverse();
    out
}

/// Bytes from `"123"`, `"512M"`, `"1.5G"` (suffixes K, M, G, T: powers of 1024; an
/// optional trailing `B` or `iB`).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (num, mult) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return None,
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return usize::try_from(n.checked_mul(mult)?).ok();
    }
    let x: f64 = num.parse().ok()?;
    let b = x * mult as f64;
    (x.is_finite() && x >= 0.0 && b < usize::MAX as f64).then_some(b as usize)
}

/// The cgroup v2 path of this process from `/proc/self/cgroup` (the `0::/path` line).
pub fn cgroup_v2_path(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// The cgroup v1 path of this process's memory controller from `/proc/self/cgroup`
/// (the `N:...memory...:/path` line).
pub fn cgroup_v1_path(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        ctrls
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.trim().to_string())
    })
}

/// A cgroup v2 `memory.max`: `Some(Some(bytes))`, `Some(None)` for `max` (no limit).
pub fn parse_v2_limit(s: &str) -> Option<Option<usize>> {
    match s.trim() {
        "max" => Some(None),
        v => v.parse().ok().map(Some),
    }
}

/// A cgroup v1 `memory.limit_in_bytes`: values of 2^62 and more are the kernel's
/// "unlimited" (a page-rounded `LLONG_MAX`).
pub fn parse_v1_limit(s: &str) -> Option<Option<usize>> {
    let v: u64 = s.trim().parse().ok()?;
    Some((v < 1 << 62).then_some(v as usize))
}

/// The least `limit - usage` over the levels of a cgroup hierarchy (contents of the
/// limit and usage files; a level without a limit file or with no limit is skipped, a
/// missing usage counts as 0). `None`: no level has a limit.
pub fn cgroup_levels(
    levels: &[(Option<String>, Option<String>)],
    parse_limit: fn(&str) -> Option<Option<usize>>,
) -> Option<usize> {
    levels
        .iter()
        .filter_map(|(limit, usage)| {
            let limit = parse_limit(limit.as_deref()?)??;
            let used: usize = usage
                .as_deref()
                .and_then(|u| u.trim().parse().ok())
                .unwrap_or(0);
            Some(limit.saturating_sub(used))
        })
        .min()
}

/// The Slurm job's memory on this node in bytes, from the values of `SLURM_MEM_PER_NODE`
/// (MB), or `SLURM_MEM_PER_CPU` (MB) times `SLURM_CPUS_ON_NODE` (else
/// `SLURM_CPUS_PER_TASK`, else 1). `None` outside a Slurm job or for 0 ("all memory").
pub fn slurm_limit(
    mem_per_node: Option<&str>,
    mem_per_cpu: Option<&str>,
    cpus_on_node: Option<&str>,
    cpus_per_task: Option<&str>,
) -> Option<usize> {
    let mb = |s: &str| -> Option<usize> {
        let s = s.trim();
        // Slurm writes plain MB; accept its unit suffixes too.
        match s.parse::<usize>() {
            Ok(v) => v.checked_mul(1 << 20),
            Err(_) => parse_size(s),
        }
    };
    let bytes = if let Some(v) = mem_per_node {
        mb(v)?
    } else {
        let per_cpu = mb(mem_per_cpu?)?;
        let cpus = cpus_on_node
            .or(cpus_per_task)
            .and_then(|c| c.trim().parse::<usize>().ok())
            .unwrap_or(1);
        per_cpu.saturating_mul(cpus)
    };
    (bytes > 0).then_some(bytes)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn meminfo_available(meminfo: &str) -> Option<usize> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<usize>().ok())
        .and_then(|kb| kb.checked_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_sums_name_their_terms_when_they_overflow() {
        assert_eq!(product(&[("L", 3), ("M", 4), ("D", 5)]), Ok(60));
        let e = product(&[("L", 1 << 31), ("M", 1 << 30), ("D", 1), ("bytes", 8)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'L' x 'M' x 'D' x 'bytes' = 2147483648 x 1073741824 x 1 x 8 overflows"),
            "{e}"
        );
        assert_eq!(sum(&[("a", 1), ("b", 2)]), Ok(3));
        assert!(product(&[("a", 1 << 62), ("b", 2)]).is_err());
        let e = sum(&[("weights", MAX_SIZE), ("workspace", 1)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'weights' + 'workspace'"), "{e}");
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("100000000"), Some(100_000_000));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("4KiB"), Some(4096));
        assert_eq!(parse_size(" 7K\n"), Some(7168));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }

    #[test]
    fn cgroup_paths_come_from_proc_self_cgroup() {
        let v2 = "0::/system.slice/slurmstepd.scope/job_42\n";
        assert_eq!(
            cgroup_v2_path(v2).as_deref(),
            Some("/system.slice/slurmstepd.scope/job_42")
        );
        assert_eq!(cgroup_v1_path(v2), None);
        let v1 = "12:cpu,cpuacct:/slurm/uid_1/job_7\n11:memory:/slurm/uid_1/job_7\n0::/\n";
        assert_eq!(cgroup_v1_path(v1).as_deref(), Some("/slurm/uid_1/job_7"));
        let both = "3:blkio,memory:/a\n";
        assert_eq!(cgroup_v1_path(both).as_deref(), Some("/a"));
        let dirs = ancestors(Path::new("/sys/fs/cgroup"), "/a/b");
        let dirs: Vec<_> = dirs.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            dirs,
            ["/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a", "/sys/fs/cgroup"]
        );
    }

    #[test]
    fn cgroup_limits_take_the_least_headroom_of_any_level() {
        let s = |x: &str| Some(x.to_string());
        // The job: 512 MB limit, 100 MB used; its parent: no limit; the slice: 8 GB,
        // 7.8 GB used by all its jobs together.
        let levels = [
            (s("536870912\n"), s("104857600\n")),
            (s("max\n"), s("5000000000\n")),
            (s("8000000000\n"), s("7800000000\n")),
            (None, None),
        ];
        assert_eq!(
            cgroup_levels(&levels, parse_v2_limit),
            Some(200_000_000usize)
        );
        let unlimited = [(s("max"), s("1")), (None, None)];
        assert_eq!(cgroup_levels(&unlimited, parse_v2_limit), None);
        // Usage above the limit (reclaim pending) leaves nothing, not a wrap.
        let over = [(s("100"), s("150"))];
        assert_eq!(cgroup_levels(&over, parse_v2_limit), Some(0));
        // v1: LLONG_MAX rounded to a page is no limit.
        let v1 = [(s("9223372036854771712"), s("1000"))];
        assert_eq!(cgroup_levels(&v1, parse_v1_limit), None);
        let v1 = [(s("1073741824"), s("73741824"))];
        assert_eq!(cgroup_levels(&v1, parse_v1_limit), Some(1_000_000_000));
        assert_eq!(parse_v2_limit("junk"), None);
    }

    #[test]
    fn slurm_memory_per_node_or_per_cpu() {
        assert_eq!(
            slurm_limit(Some("4096"), Some("1"), None, None),
            Some(4096 << 20)
        );
        assert_eq!(
            slurm_limit(None, Some("1000"), Some("4"), Some("2")),
            Some(4000 << 20)
        );
        assert_eq!(
            slurm_limit(None, Some("1000"), None, Some("2")),
            Some(2000 << 20)
        );
        assert_eq!(
            slurm_limit(None, Some("1000"), None, None),
            Some(1000 << 20)
        );
        assert_eq!(slurm_limit(None, None, Some("4"), None), None);
        assert_eq!(slurm_limit(Some("0"), None, None, None), None);
        assert_eq!(slurm_limit(Some("2G"), None, None, None), Some(2 << 30));
    }

    #[test]
    fn meminfo_gives_mem_available() {
        let m = "MemTotal:       16318588 kB\nMemFree:  1000 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(meminfo_available(m), Some(12_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn the_least_source_wins_and_checks_name_it() {
        let a = least(&[
            (8 << 30, Source::MemInfo),
            (512 << 20, Source::CgroupV2),
            (1 << 30, Source::Slurm),
        ]);
        assert_eq!(a.source, Source::CgroupV2);
        assert_eq!(a.bytes, 512 << 20);
        let e = a.check(12_300_000_000, "the run").unwrap_err().to_string();
        assert!(
            e.contains("the run needs 12.3 GB")
                && e.contains("0.537 GB available")
                && e.contains("cgroup v2 limit"),
            "{e}"
        );
        assert!(a.check(1000, "x").is_ok());
        let none = least(&[]);
        assert_eq!(none.source, Source::Unknown);
        assert!(none.check(usize::MAX, "anything").is_ok());
        assert_eq!(none.scaled(0.5).bytes, usize::MAX);
        assert_eq!(a.scaled(0.5).bytes, 256 << 20);
    }

    #[test]
    fn available_reads_something_here() {
        // Whatever the machine, the call succeeds (the override may be set by a user).
        if std::env::var_os("RESLIM_MEMORY_LIMIT").is_none() {
            let a = available().unwrap();
            assert!(a.bytes > 0, "{a:?}");
        }
    }
}
