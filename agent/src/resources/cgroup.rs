//! Control groups: where this process's cgroups are (v1, v2 or hybrid) and
//! what their limits and counters say. Hand-parsed: no well-kept crate
//! reads cgroup limits and throttling for both versions.
//!
//! Every path is resolved under a `root` (`/` in production, a fixture tree
//! in tests), from the contents of `/proc/self/cgroup` and
//! `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use super::files::{reason, ProcFiles};

/// Above this a v1 limit means "no limit" (the kernel reports
/// `PAGE_COUNTER_MAX` pages, 9223372036854771712 bytes on 4 KiB pages).
const V1_UNLIMITED: u64 = 1 << 62;

/// Which cgroup version a controller is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

impl Version {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }
}

/// A controller's directory for this process, and the mount point above
/// which limits are no longer looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControllerDir {
    pub(crate) version: Version,
    pub(crate) dir: PathBuf,
    pub(crate) mount_point: PathBuf,
}

impl ControllerDir {
    fn read(&self, files: &mut ProcFiles, file: &str) -> Result<String, String> {
        let path = self.dir.join(file);
        files
            .read(&path)
            .map_err(|e| format!("cannot read {}: {}", path.display(), reason(&e)))
    }

    /// This directory and its ancestors up to the mount point, innermost first.
    fn lineage(&self) -> impl Iterator<Item = &Path> {
        let top = self.mount_point.as_path();
        self.dir
            .ancestors()
            .take_while(move |dir| dir.starts_with(top))
    }

    fn describe(&self) -> String {
        format!("{} {}", self.version.as_str(), self.dir.display())
    }
}

/// The cgroup directories of this process, per controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cgroups {
    pub(crate) cpu: Option<ControllerDir>,
    pub(crate) memory: Option<ControllerDir>,
    pub(crate) pids: Option<ControllerDir>,
    /// The unified (v2) directory, for pressure files; present on v2 and
    /// on hybrid hosts.
    pub(crate) unified: Option<ControllerDir>,
}

struct Mount<'a> {
    root: &'a str,
    point: String,
    fstype: &'a str,
    options: &'a str,
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount<'_>> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let _source = post.next()?;
            let options = post.next().unwrap_or("");
            Some(Mount {
                root: pre.get(3)?,
                point: unescape_octal(pre.get(4)?),
                fstype,
                options,
            })
        })
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(value) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn resolve(root: &Path, mount: &Mount<'_>, cgroup_path: &str, version: Version) -> ControllerDir {
    let relative = cgroup_path
        .strip_prefix(mount.root)
        .unwrap_or(cgroup_path)
        .trim_start_matches('/');
    let mount_point = root.join(mount.point.trim_start_matches('/'));
    // Outside a cgroup namespace the path may not be below the mount's
    // root (e.g. a bind-mounted subtree); then the mount point itself is
    // the best guess.
    let dir = if cgroup_path.starts_with(mount.root) {
        mount_point.join(relative)
    } else {
        mount_point.clone()
    };
    ControllerDir {
        version,
        dir,
        mount_point,
    }
}

/// Finds this process's cgroup directories from the text of
/// `/proc/self/cgroup` and `/proc/self/mountinfo`, with mount points taken
/// relative to `root`. A v1 controller wins over the unified hierarchy
/// (hybrid hosts mount controllers on v1).
pub(crate) fn discover(proc_cgroup: &str, mountinfo: &str, root: &Path) -> Cgroups {
    let mounts = parse_mounts(mountinfo);
    let mut cgroups = Cgroups::default();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            if let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") {
                cgroups.unified = Some(resolve(root, mount, path, Version::V2));
            }
            continue;
        }
        for controller in controllers.split(',') {
            let slot = match controller {
                "cpu" => &mut cgroups.cpu,
                "memory" => &mut cgroups.memory,
                "pids" => &mut cgroups.pids,
                _ => continue,
            };
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller));
            if let Some(mount) = mount {
                *slot = Some(resolve(root, mount, path, Version::V1));
            }
        }
    }
    // On v2 a controller is usable where its interface files exist.
    if let Some(unified) = &cgroups.unified {
        let enabled =
            std::fs::read_to_string(unified.dir.join("cgroup.controllers")).unwrap_or_default();
        let has = |name: &str| enabled.split_whitespace().any(|c| c == name);
        if cgroups.cpu.is_none() && (has("cpu") || unified.dir.join("cpu.stat").exists()) {
            cgroups.cpu = Some(unified.clone());
        }
        if cgroups.memory.is_none() && has("memory") {
            cgroups.memory = Some(unified.clone());
        }
        if cgroups.pids.is_none() && has("pids") {
            cgroups.pids = Some(unified.clone());
        }
    }
    cgroups
}

/// Finds this process's cgroups on the live system.
pub(crate) fn discover_live() -> Result<Cgroups, String> {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {}", reason(&e)))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {}", reason(&e)))?;
    Ok(discover(&proc_cgroup, &mountinfo, Path::new("/")))
}

/// `key value` lines (cpu.stat, memory.events, memory.stat, …).
pub(crate) fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The smallest numeric value of `file` in the cgroup and its ancestors
/// (`max` and missing files mean no limit at that level). Limits change
/// rarely: they are re-read every few seconds, not at every sample.
fn tightest_limit(dir: &ControllerDir, files: &mut ProcFiles, file: &str) -> Option<u64> {
    dir.lineage()
        .filter_map(|level| files.read_slow(&level.join(file)).ok())
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .min()
}

fn parse_u64(text: &str, what: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("unexpected content in {what}: {:?}", text.trim()))
}

/// CPU limit and throttling of the cgroup.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CpuCgroup {
    /// Quota in cores (quota / period) of the most restrictive cgroup on the
    /// path, `None` without a quota.
    pub(crate) quota_cores: Option<f64>,
    /// CFS enforcement periods that elapsed.
    pub(crate) periods: u64,
    /// Periods in which the cgroup was throttled.
    pub(crate) throttled_periods: u64,
    /// Time throttled, in seconds.
    pub(crate) throttled_seconds: f64,
    pub(crate) source: String,
}

pub(crate) fn read_cpu(dir: &ControllerDir, files: &mut ProcFiles) -> Result<CpuCgroup, String> {
    let stat = dir.read(files, "cpu.stat")?;
    let mut quota_cores: Option<f64> = None;
    for level in dir.lineage() {
        let level_quota = match dir.version {
            Version::V2 => files
                .read_slow(&level.join("cpu.max"))
                .ok()
                .and_then(|text| parse_cpu_max(&text)),
            Version::V1 => {
                let quota = files.read_slow(&level.join("cpu.cfs_quota_us")).ok();
                let period = files.read_slow(&level.join("cpu.cfs_period_us")).ok();
                match (quota, period) {
                    (Some(q), Some(p)) => parse_cfs_quota(&q, &p),
                    _ => None,
                }
            }
        };
        if let Some(cores) = level_quota {
            quota_cores = Some(quota_cores.map_or(cores, |q: f64| q.min(cores)));
        }
    }
    let throttled_seconds = match dir.version {
        Version::V2 => flat_keyed(&stat, "throttled_usec").unwrap_or(0) as f64 / 1e6,
        Version::V1 => flat_keyed(&stat, "throttled_time").unwrap_or(0) as f64 / 1e9,
    };
    Ok(CpuCgroup {
        quota_cores,
        periods: flat_keyed(&stat, "nr_periods").unwrap_or(0),
        throttled_periods: flat_keyed(&stat, "nr_throttled").unwrap_or(0),
        throttled_seconds,
        source: dir.describe(),
    })
}

/// `cpu.max`: `max 100000` or `150000 100000`.
pub(crate) fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

/// `cpu.cfs_quota_us` (-1 = none) over `cpu.cfs_period_us`.
pub(crate) fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0.0).then(|| quota as f64 / period)
}

/// Memory usage, limit and events of the cgroup.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemoryCgroup {
    /// Charged memory (including page cache), bytes.
    pub(crate) usage_bytes: u64,
    /// Usage minus inactive file cache: what the OOM killer and kubelet
    /// look at, bytes.
    pub(crate) working_set_bytes: u64,
    /// Effective limit (the most restrictive on the path), `None` if unlimited.
    pub(crate) limit_bytes: Option<u64>,
    /// Processes killed by the OOM killer in this cgroup.
    pub(crate) oom_kills: Option<u64>,
    /// Times usage hit the limit: v2 `memory.events` `max`, v1 `memory.failcnt`.
    pub(crate) limit_hits: Option<u64>,
    /// v2 `memory.events` `high`: times usage went over the high boundary
    /// and the cgroup was throttled into reclaim.
    pub(crate) high_events: Option<u64>,
    pub(crate) source: String,
}

pub(crate) fn read_memory(
    dir: &ControllerDir,
    files: &mut ProcFiles,
) -> Result<MemoryCgroup, String> {
    let stat = dir.read(files, "memory.stat").unwrap_or_default();
    match dir.version {
        Version::V2 => {
            let usage_bytes = parse_u64(&dir.read(files, "memory.current")?, "memory.current")?;
            let limit = tightest_limit(dir, files, "memory.max");
            let events = dir.read(files, "memory.events").unwrap_or_default();
            let inactive = flat_keyed(&stat, "inactive_file").unwrap_or(0);
            Ok(MemoryCgroup {
                usage_bytes,
                working_set_bytes: usage_bytes.saturating_sub(inactive),
                limit_bytes: limit,
                oom_kills: flat_keyed(&events, "oom_kill"),
                limit_hits: flat_keyed(&events, "max"),
                high_events: flat_keyed(&events, "high"),
                source: dir.describe(),
            })
        }
        Version::V1 => {
            let usage_bytes = parse_u64(
                &dir.read(files, "memory.usage_in_bytes")?,
                "memory.usage_in_bytes",
            )?;
            let limit = flat_keyed(&stat, "hierarchical_memory_limit")
                .or_else(|| {
                    files
                        .read_slow(&dir.dir.join("memory.limit_in_bytes"))
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                })
                .filter(|&l| l < V1_UNLIMITED);
            let inactive = flat_keyed(&stat, "total_inactive_file")
                .or_else(|| flat_keyed(&stat, "inactive_file"))
                .unwrap_or(0);
            let oom_control = dir.read(files, "memory.oom_control").unwrap_or_default();
            Ok(MemoryCgroup {
                usage_bytes,
                working_set_bytes: usage_bytes.saturating_sub(inactive),
                limit_bytes: limit,
                oom_kills: flat_keyed(&oom_control, "oom_kill"),
                limit_hits: dir
                    .read(files, "memory.failcnt")
                    .ok()
                    .and_then(|t| t.trim().parse().ok()),
                high_events: None,
                source: dir.describe(),
            })
        }
    }
}

/// Task count and limit of the cgroup's pids controller.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PidsCgroup {
    /// Tasks (threads of every process) in the cgroup.
    pub(crate) current: u64,
    /// Effective limit, `None` if unlimited.
    pub(crate) limit: Option<u64>,
    /// Forks refused because of the limit (`pids.events` `max`).
    pub(crate) refused: Option<u64>,
    pub(crate) source: String,
}

pub(crate) fn read_pids(dir: &ControllerDir, files: &mut ProcFiles) -> Result<PidsCgroup, String> {
    let current = parse_u64(&dir.read(files, "pids.current")?, "pids.current")?;
    let limit = tightest_limit(dir, files, "pids.max");
    let events = dir.read(files, "pids.events").unwrap_or_default();
    Ok(PidsCgroup {
        current,
        limit,
        refused: flat_keyed(&events, "max"),
        source: dir.describe(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes `files` (path relative to `root`, content) into a fresh tree.
    pub(crate) fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("stethoscope-cgroup-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, content) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        root
    }

    // A Kubernetes pod on cgroup v2 with a cgroup namespace: the container
    // sees its own cgroup as "/".
    const V2_CGROUP: &str = "0::/\n";
    const V2_MOUNTINFO: &str = "\
1347 1338 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
1339 1338 0:100 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
";

    fn v2_tree(name: &str) -> PathBuf {
        tree(
            name,
            &[
                ("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n"),
                ("sys/fs/cgroup/cpu.max", "150000 100000\n"),
                (
                    "sys/fs/cgroup/cpu.stat",
                    "usage_usec 8365530\nuser_usec 6243122\nsystem_usec 2122408\nnr_periods 1200\nnr_throttled 300\nthrottled_usec 4500000\nnr_bursts 0\nburst_usec 0\n",
                ),
                ("sys/fs/cgroup/memory.current", "268435456\n"),
                ("sys/fs/cgroup/memory.max", "536870912\n"),
                (
                    "sys/fs/cgroup/memory.events",
                    "low 0\nhigh 7\nmax 42\noom 2\noom_kill 1\noom_group_kill 0\n",
                ),
                (
                    "sys/fs/cgroup/memory.stat",
                    "anon 201326592\nfile 67108864\nkernel 4194304\nactive_file 33554432\ninactive_file 16777216\n",
                ),
                ("sys/fs/cgroup/pids.current", "37\n"),
                ("sys/fs/cgroup/pids.max", "1024\n"),
                ("sys/fs/cgroup/pids.events", "max 3\n"),
                (
                    "sys/fs/cgroup/cpu.pressure",
                    "some avg10=12.50 avg60=8.00 avg300=2.10 total=123456789\nfull avg10=1.00 avg60=0.50 avg300=0.10 total=2345678\n",
                ),
            ],
        )
    }

    #[test]
    fn cgroup_v2_in_a_namespace() {
        let root = v2_tree("v2");
        let cgroups = discover(V2_CGROUP, V2_MOUNTINFO, &root);
        let cpu_dir = cgroups.cpu.as_ref().unwrap();
        assert_eq!(cpu_dir.version, Version::V2);
        assert_eq!(cpu_dir.dir, root.join("sys/fs/cgroup/"));
        let cpu = read_cpu(cpu_dir, &mut ProcFiles::default()).unwrap();
        assert_eq!(cpu.quota_cores, Some(1.5));
        assert_eq!((cpu.periods, cpu.throttled_periods), (1200, 300));
        assert!((cpu.throttled_seconds - 4.5).abs() < 1e-9);
        let memory =
            read_memory(cgroups.memory.as_ref().unwrap(), &mut ProcFiles::default()).unwrap();
        assert_eq!(memory.usage_bytes, 256 << 20);
        assert_eq!(memory.working_set_bytes, 240 << 20);
        assert_eq!(memory.limit_bytes, Some(512 << 20));
        assert_eq!(memory.oom_kills, Some(1));
        assert_eq!(memory.limit_hits, Some(42));
        assert_eq!(memory.high_events, Some(7));
        let pids = read_pids(cgroups.pids.as_ref().unwrap(), &mut ProcFiles::default()).unwrap();
        assert_eq!(
            (pids.current, pids.limit, pids.refused),
            (37, Some(1024), Some(3))
        );
        assert!(cgroups.unified.is_some());
    }

    #[test]
    fn cgroup_v2_nested_takes_the_tightest_ancestor_limit() {
        let root = tree(
            "v2-nested",
            &[
                ("sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n"),
                ("sys/fs/cgroup/kubepods.slice/cpu.max", "50000 100000\n"),
                ("sys/fs/cgroup/kubepods.slice/memory.max", "1073741824\n"),
                (
                    "sys/fs/cgroup/kubepods.slice/pod1/cgroup.controllers",
                    "cpu memory pids\n",
                ),
                ("sys/fs/cgroup/kubepods.slice/pod1/cpu.max", "max 100000\n"),
                ("sys/fs/cgroup/kubepods.slice/pod1/memory.max", "max\n"),
                ("sys/fs/cgroup/kubepods.slice/pod1/memory.current", "1000\n"),
                (
                    "sys/fs/cgroup/kubepods.slice/pod1/cpu.stat",
                    "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
                ),
            ],
        );
        let cgroups = discover("0::/kubepods.slice/pod1\n", V2_MOUNTINFO, &root);
        let cpu = read_cpu(cgroups.cpu.as_ref().unwrap(), &mut ProcFiles::default()).unwrap();
        assert_eq!(cpu.quota_cores, Some(0.5));
        let memory =
            read_memory(cgroups.memory.as_ref().unwrap(), &mut ProcFiles::default()).unwrap();
        assert_eq!(memory.limit_bytes, Some(1 << 30));
        assert_eq!(
            memory.oom_kills, None,
            "no memory.events: unknown, not zero"
        );
    }

    // A Docker container on a cgroup v1 host without a cgroup namespace:
    // /proc/self/cgroup shows the host path, the mount's root is that path.
    const V1_CGROUP: &str = "\
12:pids:/docker/4f1c
11:memory:/docker/4f1c
4:cpu,cpuacct:/docker/4f1c
1:name=systemd:/docker/4f1c
0::/system.slice/containerd.service
";
    const V1_MOUNTINFO: &str = "\
712 703 0:63 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs rw,mode=755
713 712 0:30 /docker/4f1c /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime master:11 - cgroup cgroup rw,xattr,name=systemd
716 712 0:34 /docker/4f1c /sys/fs/cgroup/cpu,cpuacct ro,nosuid,nodev,noexec,relatime master:17 - cgroup cgroup rw,cpu,cpuacct
720 712 0:38 /docker/4f1c /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:21 - cgroup cgroup rw,memory
724 712 0:42 /docker/4f1c /sys/fs/cgroup/pids ro,nosuid,nodev,noexec,relatime master:25 - cgroup cgroup rw,pids
";

    #[test]
    fn cgroup_v1_docker_without_namespace() {
        let root = tree(
            "v1",
            &[
                ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "200000\n"),
                ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
                (
                    "sys/fs/cgroup/cpu,cpuacct/cpu.stat",
                    "nr_periods 500\nnr_throttled 25\nthrottled_time 1500000000\nnr_bursts 0\nburst_time 0\n",
                ),
                ("sys/fs/cgroup/memory/memory.usage_in_bytes", "104857600\n"),
                ("sys/fs/cgroup/memory/memory.limit_in_bytes", "209715200\n"),
                ("sys/fs/cgroup/memory/memory.failcnt", "9\n"),
                ("sys/fs/cgroup/memory/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
                (
                    "sys/fs/cgroup/memory/memory.stat",
                    "cache 4096\nrss 100000\nhierarchical_memory_limit 209715200\ntotal_inactive_file 4857600\n",
                ),
                ("sys/fs/cgroup/pids/pids.current", "12\n"),
                ("sys/fs/cgroup/pids/pids.max", "max\n"),
            ],
        );
        let cgroups = discover(V1_CGROUP, V1_MOUNTINFO, &root);
        let cpu_dir = cgroups.cpu.as_ref().unwrap();
        assert_eq!(cpu_dir.version, Version::V1);
        assert_eq!(cpu_dir.dir, root.join("sys/fs/cgroup/cpu,cpuacct/"));
        let cpu = read_cpu(cpu_dir, &mut ProcFiles::default()).unwrap();
        assert_eq!(cpu.quota_cores, Some(2.0));
        assert_eq!((cpu.periods, cpu.throttled_periods), (500, 25));
        assert!((cpu.throttled_seconds - 1.5).abs() < 1e-9);
        let memory =
            read_memory(cgroups.memory.as_ref().unwrap(), &mut ProcFiles::default()).unwrap();
        assert_eq!(memory.usage_bytes, 100 << 20);
        assert_eq!(memory.working_set_bytes, 100_000_000);
        assert_eq!(memory.limit_bytes, Some(200 << 20));
        assert_eq!((memory.oom_kills, memory.limit_hits), (Some(2), Some(9)));
        let pids = read_pids(cgroups.pids.as_ref().unwrap(), &mut ProcFiles::default()).unwrap();
        assert_eq!((pids.current, pids.limit), (12, None));
        assert!(
            cgroups.unified.is_none(),
            "no cgroup2 mount in this container"
        );
    }

    #[test]
    fn cgroup_v1_hybrid_host_with_unlimited_memory() {
        // This development machine: v1 controllers plus an empty unified tree.
        let root = tree(
            "hybrid",
            &[
                ("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n"),
                ("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"),
                ("sys/fs/cgroup/cpu/cpu.stat", "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"),
                ("sys/fs/cgroup/memory/process_api/d05d/memory.usage_in_bytes", "4829184\n"),
                ("sys/fs/cgroup/memory/process_api/d05d/memory.limit_in_bytes", "9223372036854771712\n"),
                (
                    "sys/fs/cgroup/memory/process_api/d05d/memory.stat",
                    "cache 1564672\nhierarchical_memory_limit 9223372036854771712\ntotal_inactive_file 110592\n",
                ),
                ("sys/fs/cgroup/memory/process_api/d05d/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
                ("sys/fs/cgroup/unified/cgroup.controllers", ""),
                ("sys/fs/cgroup/unified/cpu.pressure", "some avg10=0.26 avg60=2.29 avg300=4.16 total=192404316\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            ],
        );
        let proc_cgroup =
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/d05d\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let cgroups = discover(proc_cgroup, mountinfo, &root);
        let cpu = read_cpu(cgroups.cpu.as_ref().unwrap(), &mut ProcFiles::default()).unwrap();
        assert_eq!(cpu.quota_cores, None);
        let memory =
            read_memory(cgroups.memory.as_ref().unwrap(), &mut ProcFiles::default()).unwrap();
        assert_eq!(memory.limit_bytes, None, "PAGE_COUNTER_MAX means no limit");
        assert_eq!(memory.oom_kills, Some(0));
        assert!(
            read_pids(cgroups.pids.as_ref().unwrap(), &mut ProcFiles::default()).is_err(),
            "missing files are a reason, not a panic"
        );
        assert_eq!(
            cgroups.unified.as_ref().unwrap().dir,
            root.join("sys/fs/cgroup/unified/")
        );
    }

    #[test]
    fn malformed_inputs_do_not_panic() {
        let root = tree("garbage", &[]);
        for text in ["", ":", "::", "x:y", "0::", "\n\n", "1:cpu"] {
            let _ = discover(text, "garbage - line\n- - -\n", &root);
        }
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("0 0"), None);
        assert_eq!(parse_cpu_max("junk"), None);
        assert_eq!(parse_cfs_quota("-1", "100000"), None);
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("tail\\"), "tail\\");
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const CGROUP: &[&str] = &[
            "0::/",
            "\n",
            ":",
            "cpu,cpuacct",
            "memory",
            "pids",
            "/docker/",
            " - ",
            "cgroup2 ",
            "cgroup ",
            "rw,",
            "/sys/fs/cgroup",
            "\\040",
            "\\",
            " ",
            "max",
            "100000",
            "-1",
        ];

        proptest! {
            #[test]
            fn cgroup_files_never_panic(
                proc_cgroup in input_of(CGROUP),
                mountinfo in input_of(CGROUP),
                value in input_of(CGROUP),
            ) {
                let root = std::env::temp_dir().join("stethoscope-cgroup-fuzz-none");
                bounded("cgroup discovery", &proc_cgroup, || {
                    let _ = discover(&proc_cgroup, &mountinfo, &root);
                });
                bounded("cgroup values", &value, || {
                    let _ = parse_cpu_max(&value);
                    let _ = parse_cfs_quota(&value, &proc_cgroup);
                    let _ = flat_keyed(&value, "nr_throttled");
                    let _ = unescape_octal(&value);
                });
            }
        }
    }
}
