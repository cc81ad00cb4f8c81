//! What the inventory is made of: architectures, sites, donors, health, labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Problem;
use super::validation::{FieldErrors, check_email, check_optional_text, check_text};

text_enum! {
    /// CPU architecture of a machine.
    pub enum Arch {
        X86_64 => "x86_64",
        Aarch64 => "aarch64",
        Riscv64 => "riscv64",
        Loongarch64 => "loongarch64",
    }
}

text_enum! {
    /// What kind of place a site is.
    pub enum SiteKind {
        /// The foundation's own lab: space, power and network provided by the foundation.
        FoundationLab => "foundation_lab",
        /// A donor's premises, where usage-right donations run.
        DonorSite => "donor_site",
        /// A public cloud region.
        CloudRegion => "cloud_region",
    }
}

text_enum! {
    /// A public cloud provider.
    pub enum CloudProvider {
        Aws => "aws",
        HuaweiCloud => "huawei_cloud",
        Ctyun => "ctyun",
    }
}

text_enum! {
    /// What kind of organisation a donor is.
    pub enum DonorKind {
        Company => "company",
        University => "university",
        Individual => "individual",
        Other => "other",
    }
}

text_enum! {
    /// Whether a machine is usable right now. Derived from heartbeats and SSH checks, and kept
    /// apart from the lifecycle (what the machine is doing in its donation's life).
    pub enum Health {
        Unknown => "unknown",
        Healthy => "healthy",
        Degraded => "degraded",
        Unreachable => "unreachable",
    }
}

impl Default for Health {
    /// Nothing is known until an agent reports or an SSH check runs.
    fn default() -> Self {
        Health::Unknown
    }
}

/// A hardware accelerator in a machine (GPU, NPU, FPGA...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Accelerator {
    /// Kind of device, e.g. `gpu`, `npu`, `fpga`.
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 32
    )]
    pub kind: String,
    /// Vendor model name.
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 128
    )]
    pub model: String,
    /// How many of this device the machine has.
    #[serde(default = "one")]
    #[schema(default = 1, minimum = 1, maximum = 64)]
    pub count: i64,
}

fn one() -> i64 {
    1
}

impl Accelerator {
    pub fn validate(&self, field: &str, errors: &mut FieldErrors) {
        check_text(errors, &format!("{field}.kind"), &self.kind, 32);
        check_text(errors, &format!("{field}.model"), &self.model, 128);
        if !(1..=64).contains(&self.count) {
            errors.add(format!("{field}.count"), Problem::Between { min: 1, max: 64 });
        }
    }
}

/// A person to talk to at a donor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 200
    )]
    pub name: String,
    pub email: String,
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 64
    )]
    pub phone: Option<String>,
    /// What they are the contact for, e.g. `technical`, `legal`, `shipping`.
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 64
    )]
    pub role: Option<String>,
}

impl Contact {
    pub fn validate(&self, field: &str, errors: &mut FieldErrors) {
        check_text(errors, &format!("{field}.name"), &self.name, 200);
        if let Err(problem) = check_email(&self.email) {
            errors.add(format!("{field}.email"), problem);
        }
        check_optional_text(errors, &format!("{field}.phone"), self.phone.as_deref(), 64);
        check_optional_text(errors, &format!("{field}.role"), self.role.as_deref(), 64);
    }
}

/// Free-form `key=value` labels on a machine, used by schedulers to match requirements.
pub type Labels = BTreeMap<String, String>;

/// The largest number of labels a machine may carry.
pub const MAX_LABELS: usize = 64;

/// Checks one label key: 1 to 63 characters of `a-z A-Z 0-9 . _ - /`, starting with a letter
/// or digit (the Kubernetes label-key alphabet, so labels can be mirrored there).
pub fn check_label_key(key: &str) -> Result<(), Problem> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    match key.chars().next() {
        Some(first) if key.len() <= 63 && first.is_ascii_alphanumeric() && key.chars().all(valid_char) => Ok(()),
        _ => Err(Problem::NotALabelKey),
    }
}

/// Checks one label value: up to 255 characters, no control characters.
pub fn check_label_value(value: &str) -> Result<(), Problem> {
    if value.chars().count() > 255 || value.chars().any(char::is_control) {
        Err(Problem::NotALabelValue)
    } else {
        Ok(())
    }
}

/// Validates a whole label set, reporting each bad key or value under `field.<key>`.
pub fn validate_labels(field: &str, labels: &Labels, errors: &mut FieldErrors) {
    if labels.len() > MAX_LABELS {
        errors.add(field, Problem::TooMany { max: MAX_LABELS as u64 });
    }
    for (key, value) in labels {
        if let Err(problem) = check_label_key(key) {
            errors.add(format!("{field}.{key}"), problem);
        } else if let Err(problem) = check_label_value(value) {
            errors.add(format!("{field}.{key}"), problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_follow_the_kubernetes_alphabet() {
        assert!(check_label_key("board").is_ok());
        assert!(check_label_key("fleetyard.io/rack-zone_2").is_ok());
        assert!(check_label_key("").is_err());
        assert!(check_label_key("-lead").is_err());
        assert!(check_label_key("has space").is_err());
        assert!(check_label_key(&"k".repeat(64)).is_err());
    }

    #[test]
    fn arch_spellings_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.as_str().parse::<Arch>().unwrap(), *arch);
        }
        assert!("sparc64".parse::<Arch>().is_err());
    }
}
