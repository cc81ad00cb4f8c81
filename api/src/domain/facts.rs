//! What a machine says about itself (through its agent or an SSH probe), and how that is
//! compared with what its donor declared. Reported facts never overwrite the inventory: a
//! contradiction is flagged for ops to look at.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Arch;

/// Mostly static facts about a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Facts {
    /// `uname -m`, e.g. `riscv64`.
    pub arch: String,
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` from /etc/os-release.
    pub os_release: String,
    pub cpu_model: String,
    // Unsigned, and documented so: utoipa would call them int32 and int64, whose ranges they
    // exceed (an agent's report is kept in range on arrival, not refused).
    #[schema(format = "uint32")]
    pub cpu_count: u32,
    #[schema(format = "uint64")]
    pub memory_mib: u64,
    /// Size of the root file system.
    #[schema(format = "uint64")]
    pub disk_gib: u64,
    #[serde(default)]
    pub hostname: Option<String>,
}

impl Facts {
    /// These facts with each text cut to a sensible length (on a character boundary, control
    /// characters dropped) and the counts made sane. Machines report odd things (a RISC-V
    /// `isa` line runs past 200 characters); an odd fact must not keep a machine from being
    /// heard.
    pub fn sanitized(self) -> Self {
        Self {
            arch: clip(self.arch, 32),
            kernel: clip(self.kernel, 200),
            os_release: clip(self.os_release, 200),
            cpu_model: clip(self.cpu_model, 200),
            cpu_count: self.cpu_count.clamp(1, 65_536),
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
            hostname: self.hostname.map(|h| clip(h, 253)),
        }
    }
}

/// `text` without control characters, at most `max` characters long.
pub fn clip(text: String, max: usize) -> String {
    if text.len() <= max && !text.chars().any(char::is_control) {
        return text; // the usual case, on every heartbeat: no copy
    }
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// What changes from one heartbeat to the next.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    pub load1: f32,
    pub load5: f32,
    pub load15: f32,
    #[schema(format = "uint64")]
    pub uptime_secs: u64,
    /// Used share of the root file system, 0 to 100.
    pub disk_used_pct: f32,
    #[schema(format = "uint64")]
    pub memory_available_mib: u64,
}

impl Metrics {
    /// These metrics within their ranges (loads not negative, disk use 0 to 100 %).
    pub fn sanitized(self) -> Self {
        let load = |l: f32| if l.is_finite() { l.max(0.0) } else { 0.0 };
        Self {
            load1: load(self.load1),
            load5: load(self.load5),
            load15: load(self.load15),
            disk_used_pct: if self.disk_used_pct.is_finite() { self.disk_used_pct.clamp(0.0, 100.0) } else { 0.0 },
            ..self
        }
    }
}

/// One way the facts contradict the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Mismatch {
    /// The inventory field, e.g. `arch` or `memory_mib`.
    pub field: String,
    pub declared: String,
    pub reported: String,
}

/// What the donor declared, as far as facts can check it.
#[derive(Debug, Clone, Copy)]
pub struct Declared {
    pub arch: Arch,
    pub cpu_cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
}

/// The architecture `uname -m` names, in the inventory's spelling.
pub fn arch_from_uname(machine: &str) -> Option<Arch> {
    match machine {
        "x86_64" | "amd64" => Some(Arch::X86_64),
        "aarch64" | "arm64" => Some(Arch::Aarch64),
        "riscv64" => Some(Arch::Riscv64),
        "loongarch64" => Some(Arch::Loongarch64),
        _ => None,
    }
}

/// Memory a kernel reports is a little below what is installed (firmware and kernel keep
/// some); below this share of the declared amount, the declaration is wrong.
const MEMORY_TOLERANCE: f64 = 0.85;
/// File systems are smaller than their disks; the same idea.
const DISK_TOLERANCE: f64 = 0.80;

/// The contradictions between the declaration and the facts, in a stable order.
pub fn compare(declared: &Declared, facts: &Facts) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut flag = |field: &str, declared: String, reported: String| {
        out.push(Mismatch { field: field.into(), declared, reported });
    };
    if arch_from_uname(&facts.arch) != Some(declared.arch) {
        flag("arch", declared.arch.to_string(), facts.arch.clone());
    }
    if i64::from(facts.cpu_count) < i64::from(declared.cpu_cores) {
        flag("cpu_cores", declared.cpu_cores.to_string(), facts.cpu_count.to_string());
    }
    if (facts.memory_mib as f64) < declared.memory_mib as f64 * MEMORY_TOLERANCE {
        flag("memory_mib", declared.memory_mib.to_string(), facts.memory_mib.to_string());
    }
    if (facts.disk_gib as f64) < declared.disk_gib as f64 * DISK_TOLERANCE {
        flag("disk_gib", declared.disk_gib.to_string(), facts.disk_gib.to_string());
    }
    out
}

/// The shell script an SSH probe runs: one round trip, `KEY=value` lines, POSIX sh only.
pub const PROBE_SCRIPT: &str = r#"echo "ARCH=$(uname -m)"
echo "KERNEL=$(uname -r)"
echo "HOSTNAME=$(uname -n)"
echo "CPUS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || grep -c ^processor /proc/cpuinfo)"
echo "CPU_MODEL=$(grep -m1 -E '^(model name|uarch|cpu model|Model Name)' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "MEM=$(grep -m1 MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
echo "MEM_AVAILABLE=$(grep -m1 MemAvailable /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
( . /etc/os-release 2>/dev/null && echo "OS=$PRETTY_NAME" )
echo "DF=$(df -Pk / | tail -n 1 | tr -s ' ' | cut -d' ' -f2,3)"
echo "LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "UPTIME=$(cut -d' ' -f1 /proc/uptime)"
"#;

/// Parses what [`PROBE_SCRIPT`] printed.
pub fn parse_probe_output(output: &str) -> Result<(Facts, Metrics), String> {
    let value = |key: &str| {
        output
            .lines()
            .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
            .map(str::trim)
            .ok_or_else(|| format!("the probe did not report {key}"))
    };
    let number = |key: &str| -> Result<u64, String> {
        value(key)?.parse::<u64>().map_err(|_| format!("the probe reported a bad {key}"))
    };
    let float = |text: &str, what: &str| -> Result<f32, String> {
        text.parse::<f32>().map_err(|_| format!("the probe reported a bad {what}"))
    };
    let (disk_total_kib, disk_used_kib) = {
        let df = value("DF")?;
        let mut parts = df.split_whitespace().map(|p| p.parse::<u64>());
        match (parts.next(), parts.next()) {
            (Some(Ok(total)), Some(Ok(used))) if total > 0 => (total, used),
            _ => return Err("the probe reported a bad DF".into()),
        }
    };
    let loads: Vec<&str> = value("LOADAVG")?.split_whitespace().collect();
    let [load1, load5, load15] = loads[..] else { return Err("the probe reported a bad LOADAVG".into()) };
    let facts = Facts {
        arch: value("ARCH")?.to_owned(),
        kernel: value("KERNEL")?.to_owned(),
        os_release: value("OS").unwrap_or("unknown").to_owned(),
        cpu_model: value("CPU_MODEL").ok().filter(|m| !m.is_empty()).unwrap_or("unknown").to_owned(),
        cpu_count: u32::try_from(number("CPUS")?).map_err(|_| "the probe reported a bad CPUS")?,
        memory_mib: number("MEM")? / 1024,
        disk_gib: disk_total_kib / (1024 * 1024),
        hostname: value("HOSTNAME").ok().map(str::to_owned),
    };
    let metrics = Metrics {
        load1: float(load1, "load")?,
        load5: float(load5, "load")?,
        load15: float(load15, "load")?,
        uptime_secs: float(value("UPTIME")?, "uptime")? as u64,
        disk_used_pct: (disk_used_kib as f64 * 100.0 / disk_total_kib as f64) as f32,
        memory_available_mib: number("MEM_AVAILABLE").unwrap_or(0) / 1024,
    };
    Ok((facts, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(arch: &str, cpus: u32, memory_mib: u64) -> Facts {
        Facts {
            arch: arch.into(),
            kernel: "6.6.0".into(),
            os_release: "openEuler 24.03 (LTS)".into(),
            cpu_model: "SG2042".into(),
            cpu_count: cpus,
            memory_mib,
            disk_gib: 900,
            hostname: None,
        }
    }

    const DECLARED: Declared = Declared { arch: Arch::Riscv64, cpu_cores: 64, memory_mib: 131072, disk_gib: 1000 };

    #[test]
    fn honest_facts_match_the_declaration() {
        // A kernel reports a little less memory than is installed.
        assert!(compare(&DECLARED, &facts("riscv64", 64, 128_000)).is_empty());
    }

    #[test]
    fn a_riscv64_board_reporting_x86_64_and_half_the_memory_is_flagged() {
        let found = compare(&DECLARED, &facts("x86_64", 64, 65536));
        let fields: Vec<_> = found.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(fields, ["arch", "memory_mib"]);
        assert_eq!(found[0].declared, "riscv64");
        assert_eq!(found[0].reported, "x86_64");
    }

    #[test]
    fn probe_output_parses_into_facts_and_metrics() {
        let output = "ARCH=riscv64\nKERNEL=6.6.0-27.0.0.31.oe2403.riscv64\nHOSTNAME=rv-01\nCPUS=64\n\
                      CPU_MODEL=Sophgo SG2042\nMEM=131500000\nMEM_AVAILABLE=120000000\nOS=openEuler 24.03 (LTS)\n\
                      DF=1000000000 250000000\nLOADAVG=1.50 0.75 0.25\nUPTIME=12345.67\n";
        let (facts, metrics) = parse_probe_output(output).unwrap();
        assert_eq!(facts.arch, "riscv64");
        assert_eq!(facts.cpu_count, 64);
        assert_eq!(facts.memory_mib, 128_417);
        assert_eq!(facts.disk_gib, 953);
        assert_eq!(facts.os_release, "openEuler 24.03 (LTS)");
        assert_eq!(metrics.load1, 1.5);
        assert_eq!(metrics.uptime_secs, 12345);
        assert!((metrics.disk_used_pct - 25.0).abs() < 0.01);
    }

    #[test]
    fn odd_facts_are_clipped_not_refused() {
        let mut odd = facts("riscv64", 0, 1024);
        odd.cpu_model = format!("rv64imafdcv_{}\u{7}", "zba_zbb_zbc_zbs_".repeat(20));
        let clean = odd.sanitized();
        assert_eq!(clean.cpu_model.chars().count(), 200);
        assert!(!clean.cpu_model.contains('\u{7}'));
        assert_eq!(clean.cpu_count, 1);
        assert_eq!(clip("6.6.0\u{1b}[31m".into(), 64), "6.6.0[31m");
        assert_eq!(clip("é".repeat(10), 4), "éééé", "cut at characters, not bytes");
        assert_eq!(clip("0.1.0".into(), 64), "0.1.0");
    }

    #[test]
    fn broken_probe_output_says_what_is_missing() {
        assert_eq!(parse_probe_output("ARCH=x86_64\n").unwrap_err(), "the probe did not report DF");
    }
}
