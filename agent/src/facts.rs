//! What the machine is and how it is doing, read from the kernel: uname, /proc, statvfs.

use std::path::Path;

use serde::Serialize;

/// Mostly static facts (the server compares them with what the donor declared).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facts {
    pub arch: String,
    pub kernel: String,
    pub os_release: String,
    pub cpu_model: String,
    pub cpu_count: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub hostname: Option<String>,
}

/// What changes between heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    pub load1: f32,
    pub load5: f32,
    pub load15: f32,
    pub uptime_secs: u64,
    pub disk_used_pct: f32,
    pub memory_available_mib: u64,
}

pub fn collect(disk: &Path) -> Result<(Facts, Metrics), String> {
    let uname = rustix::system::uname();
    let meminfo = read("/proc/meminfo")?;
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let disk_stats = rustix::fs::statvfs(disk).map_err(|e| format!("statvfs {}: {e}", disk.display()))?;
    let block = disk_stats.f_frsize.max(1);
    let disk_total = disk_stats.f_blocks * block;
    let disk_free = disk_stats.f_bfree * block;
    let loads = read("/proc/loadavg")?;
    let mut loads = loads.split_whitespace().map(|l| l.parse::<f32>().unwrap_or(0.0));
    let uptime = read("/proc/uptime")?;
    let facts = Facts {
        arch: uname.machine().to_string_lossy().into_owned(),
        kernel: uname.release().to_string_lossy().into_owned(),
        os_release: os_release().unwrap_or_else(|| "unknown".into()),
        cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
        cpu_count: online_cpus().unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
        memory_mib: kib(&meminfo, "MemTotal:") / 1024,
        disk_gib: disk_total / (1024 * 1024 * 1024),
        hostname: Some(uname.nodename().to_string_lossy().into_owned()),
    };
    let metrics = Metrics {
        load1: loads.next().unwrap_or(0.0),
        load5: loads.next().unwrap_or(0.0),
        load15: loads.next().unwrap_or(0.0),
        uptime_secs: uptime.split_whitespace().next().and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) as u64,
        disk_used_pct: if disk_total == 0 {
            0.0
        } else {
            ((disk_total - disk_free) as f64 * 100.0 / disk_total as f64) as f32
        },
        memory_available_mib: kib(&meminfo, "MemAvailable:") / 1024,
    };
    Ok((facts, metrics))
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

/// A `Key:   1234 kB` value from /proc/meminfo, in KiB.
fn kib(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The CPU's name: x86 says `model name`, RISC-V `uarch` or `isa`, LoongArch `Model Name`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model Name", "uarch", "cpu model", "isa"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == *key && !value.trim().is_empty()).then(|| value.trim().to_owned())
        })
    })
}

/// The machine's online CPUs. Not `available_parallelism`, which counts only what this
/// process may use (a systemd CPU quota or affinity mask) and would contradict the
/// declaration.
fn online_cpus() -> Option<u32> {
    cpu_list_len(&std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?)
}

/// The number of CPUs in a kernel CPU list such as `0-3,8-11,16`.
fn cpu_list_len(list: &str) -> Option<u32> {
    let mut count = 0;
    for part in list.trim().split(',') {
        count += match part.split_once('-') {
            Some((first, last)) => last.parse::<u32>().ok()?.checked_sub(first.parse().ok()?)? + 1,
            None => part.parse::<u32>().map(|_| 1).ok()?,
        };
    }
    (count > 0).then_some(count)
}

fn os_release() -> Option<String> {
    let text =
        std::fs::read_to_string("/etc/os-release").or_else(|_| std::fs::read_to_string("/usr/lib/os-release")).ok()?;
    text.lines().find_map(|line| line.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let (facts, metrics) = collect(Path::new("/")).unwrap();
        assert_eq!(facts.arch, std::env::consts::ARCH);
        assert!(facts.memory_mib > 0 && facts.cpu_count > 0 && facts.disk_gib > 0);
        assert!((0.0..=100.0).contains(&metrics.disk_used_pct));
    }

    #[test]
    fn finds_cpu_names_on_each_architecture() {
        assert_eq!(cpu_model("processor: 0\nmodel name\t: Intel Xeon\n").as_deref(), Some("Intel Xeon"));
        assert_eq!(cpu_model("hart\t: 0\nisa\t: rv64imafdc\nuarch\t: thead,c920\n").as_deref(), Some("thead,c920"));
        assert_eq!(cpu_model("Model Name\t: Loongson-3A6000\n").as_deref(), Some("Loongson-3A6000"));
        assert_eq!(kib("MemTotal:       16314784 kB\n", "MemTotal:"), 16_314_784);
    }

    #[test]
    fn counts_kernel_cpu_lists() {
        assert_eq!(cpu_list_len("0\n"), Some(1));
        assert_eq!(cpu_list_len("0-63\n"), Some(64));
        assert_eq!(cpu_list_len("0-3,8-11,16"), Some(9));
        assert_eq!(cpu_list_len("3-1"), None);
        assert_eq!(cpu_list_len(""), None);
    }
}
